"""Greedy sub-prompt bags against golden 74, the prefix-overflow fix, and encoding with real tiny CLIPs."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

from omost_engine.render.prompt_encoding import (
    CHUNK_TOKENS,
    SUFFIX_ROOM_CAP,
    PromptEncoder,
    SpecialTokens,
    greedy_chunks,
    plain_chunk,
)

GOLDEN = (
    Path(__file__).resolve().parents[2] / "fixtures" / "goldens" / "74_prompt_bagging_fake_tokenizer.json"
)
SPECIAL = SpecialTokens(bos=49406, eos=49407, pad_l=49407, pad_g=0)


def fake_ids(text: str) -> list[int]:
    """Golden 74's word-level tokenizer."""
    return [zlib.crc32(word.encode()) % 40000 + 1000 for word in text.split()]


def chunks(
    prefixes: list[str], suffixes: list[str], *, keep_suffixes: bool
) -> list[tuple[list[int], list[int]]]:
    return greedy_chunks(
        prefixes,
        suffixes,
        tokenize_l=fake_ids,
        tokenize_g=fake_ids,
        special=SPECIAL,
        keep_suffixes=keep_suffixes,
    )


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_original_bagging_reproduces_golden_74(golden: dict) -> None:
    checked = 0
    for case in golden["cases"]:
        for cond in case["conditions"]:
            got = chunks(cond["prefixes"], cond["suffixes"], keep_suffixes=False)
            assert [c[0] for c in got] == cond["bags_ids_t1"], (case["source"], cond["mask_rect"])
            assert [c[1] for c in got] == cond["bags_ids_t2"]
            checked += 1
        negative = plain_chunk(
            fake_ids(golden["negative_prompt"]), fake_ids(golden["negative_prompt"]), SPECIAL
        )
        assert list(negative) == [case["negative"]["ids_t1"], case["negative"]["ids_t2"]]
    assert checked >= 10


def test_fixed_bagging_equals_original_where_nothing_is_lost(golden: dict) -> None:
    for case in golden["cases"]:
        if case["source"].startswith("synthetic"):
            continue
        for cond in case["conditions"]:
            got = chunks(cond["prefixes"], cond["suffixes"], keep_suffixes=True)
            assert [c[0] for c in got] == cond["bags_ids_t1"]
            assert [c[1] for c in got] == cond["bags_ids_t2"]


def _content(chunk: list[int]) -> list[int]:
    return [i for i in chunk[1:] if i not in (SPECIAL.eos, SPECIAL.pad_g)]


def test_prefix_overflow_keeps_every_suffix(golden: dict) -> None:
    synthetic = next(c for c in golden["cases"] if c["source"].startswith("synthetic"))
    overflowing = [c for c in synthetic["conditions"] if c["prefix_token_count"] >= 75]
    assert overflowing, "the golden's synthetic case must overflow"
    for cond in overflowing:
        original = chunks(cond["prefixes"], cond["suffixes"], keep_suffixes=False)
        assert len({tuple(c[0]) for c in original}) == 1  # the quirk: every chunk the same prefix-only text
        fixed = chunks(cond["prefixes"], cond["suffixes"], keep_suffixes=True)
        assert fixed != original
        texts = [_content(c[0]) for c in fixed]
        for suffix in cond["suffixes"]:
            assert any(_contains(t, fake_ids(suffix)) for t in texts), suffix
        # The prefixes shrink to leave room: the region's own description stays whole, the global
        # description (first prefix) loses its tail.
        glob, local = fake_ids(cond["prefixes"][0]), fake_ids(cond["prefixes"][-1])
        limit = 75 - min(max(len(fake_ids(s)) for s in cond["suffixes"]), SUFFIX_ROOM_CAP)
        assert len(local) < limit < len(glob) + len(local)
        for t in texts:
            assert t[:limit] == glob[: limit - len(local)] + local
        assert all(len(c[0]) == CHUNK_TOKENS and c[0][0] == SPECIAL.bos for c in fixed)


def _contains(seq: list[int], sub: list[int]) -> bool:
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_long_suffix_is_split_not_cut() -> None:
    prefix = " ".join(f"p{i}" for i in range(50))
    long_suffix = " ".join(f"s{i}" for i in range(60))
    fixed = chunks([prefix], [long_suffix, "tail words."], keep_suffixes=True)
    seen = [i for c in fixed for i in _content(c[0])]
    for word_id in fake_ids(long_suffix) + fake_ids("tail words."):
        assert word_id in seen
    original = chunks([prefix], [long_suffix, "tail words."], keep_suffixes=False)
    original_seen = [i for c in original for i in _content(c[0])]
    assert not all(i in original_seen for i in fake_ids(long_suffix))  # the original cut it


def test_mismatched_tokenizers_are_a_clear_error() -> None:
    from omost_engine.errors import OmostError

    with pytest.raises(OmostError, match="tokenizers"):
        greedy_chunks(
            ["a b"], [], tokenize_l=fake_ids, tokenize_g=lambda t: fake_ids(t) + [1], special=SPECIAL
        )


def test_encoding_shapes_and_pooled_from_first_chunk(tiny_components) -> None:
    c = tiny_components
    encoder = PromptEncoder(
        tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2,
        text_encoder=c.text_encoder,
        text_encoder_2=c.text_encoder_2,
    )
    long_suffixes = [f"a red cat {i} sitting on the wall." for i in range(12)]
    groups = [encoder.chunks(["A cat on a wall."], long_suffixes), encoder.chunks(["A dog."], ["blue."])]
    assert len(groups[0]) > 1
    encoded = encoder.encode(groups)
    dim = c.text_encoder.config.hidden_size + c.text_encoder_2.config.hidden_size
    assert encoded[0].cond.shape == (1, CHUNK_TOKENS * len(groups[0]), dim)
    assert encoded[1].cond.shape == (1, CHUNK_TOKENS, dim)
    alone = encoder.encode([groups[0][:1]])[0]
    torch.testing.assert_close(encoded[0].pooled, alone.pooled)
    torch.testing.assert_close(encoded[0].cond[:, :CHUNK_TOKENS], alone.cond)
    # Penultimate hidden states of both encoders, concatenated.
    ids = torch.tensor([groups[1][0][0]])
    expected_l = c.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(encoded[1].cond[..., : expected_l.shape[-1]], expected_l)
    # Projected (SDXL) vs unprojected (original) pooled vectors really differ.
    original = PromptEncoder(
        tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2,
        text_encoder=c.text_encoder,
        text_encoder_2=c.text_encoder_2,
        pooled="unprojected",
    )
    unprojected = original.encode([groups[1]])[0].pooled
    out = c.text_encoder_2(torch.tensor([groups[1][0][1]]))
    torch.testing.assert_close(
        unprojected, out.last_hidden_state[:, groups[1][0][1].index(c.tokenizer.eos_token_id)]
    )
    torch.testing.assert_close(encoded[1].pooled, out.text_embeds)
    # CLIP-G pads with its own pad id ("!" = 0), CLIP-L with eos.
    assert groups[1][0][1][-1] == c.tokenizer_2.pad_token_id == 0
    assert groups[1][0][0][-1] == c.tokenizer.eos_token_id


@pytest.mark.parametrize(
    "text",
    [
        "lowres, bad anatomy, bad hands, cropped, worst quality",
        " ".join(["a very long negative prompt"] * 20),
    ],
)
def test_negative_chunk_equals_the_standard_tokenizer_call(tiny_components, text: str) -> None:
    c = tiny_components
    encoder = PromptEncoder(
        tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2,
        text_encoder=c.text_encoder,
        text_encoder_2=c.text_encoder_2,
    )
    ids_l, ids_g = encoder.negative_chunk(text)
    assert ids_l == c.tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids_g == c.tokenizer_2(text, padding="max_length", max_length=77, truncation=True).input_ids


def _words(prefix: str, count: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(count))


@pytest.mark.parametrize("suffix_tokens", [80, 90, 160])
@pytest.mark.parametrize("prefix_tokens", [0, 10, 60])
def test_no_token_of_a_suffix_longer_than_a_chunk_is_dropped(suffix_tokens: int, prefix_tokens: int) -> None:
    prefix = _words("p", prefix_tokens)
    long_suffix = _words("s", suffix_tokens)
    suffixes = ["before it.", long_suffix, "after it."]
    fixed = chunks([prefix] if prefix else [], suffixes, keep_suffixes=True)
    kept_prefix = len(_content(fixed[0][0])) - len(
        [i for i in _content(fixed[0][0]) if i in set(fake_ids(" ".join(suffixes)))]
    )
    # Every chunk starts with the same (possibly shortened) prefixes; what follows them, in chunk order,
    # is every suffix token, in order: the tokens that reach the encoder.
    after_prefix = [i for c in fixed for i in _content(c[0])[kept_prefix:]]
    assert after_prefix == fake_ids(" ".join(suffixes))
    assert sum(1 for i in after_prefix if i in set(fake_ids(long_suffix))) == suffix_tokens
    assert [i for c in fixed for i in _content(c[1])[kept_prefix:]] == after_prefix  # CLIP-G gets the same


@pytest.mark.parametrize("suffix_tokens", [80, 90])
def test_the_encoder_receives_every_token_of_an_80_and_90_token_suffix(
    tiny_components, suffix_tokens: int
) -> None:
    c = tiny_components
    encoder = PromptEncoder(
        tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2,
        text_encoder=c.text_encoder,
        text_encoder_2=c.text_encoder_2,
    )
    long_suffix = " ".join(["x"] * suffix_tokens)  # one token a word in the tiny vocabulary
    (word,) = c.tokenizer("x", add_special_tokens=False).input_ids
    assert len(c.tokenizer(long_suffix, add_special_tokens=False).input_ids) == suffix_tokens
    received: list[torch.Tensor] = []
    text_encoder = c.text_encoder

    class Recording(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = text_encoder

        def forward(self, ids: torch.Tensor, **kwargs):
            received.append(ids.clone())
            return self.inner(ids, **kwargs)

    encoder.text_encoder = Recording()
    encoder.encode([encoder.chunks(["A wall."], [long_suffix])])
    (ids,) = received
    assert int((ids == word).sum()) == suffix_tokens
