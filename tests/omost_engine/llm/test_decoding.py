"""Prompt-lookup decoding and the decode loop: exactness, speed in forward passes, stop tokens, cancel."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from omost_engine.llm.decoding.loop import CausalLMStepper, DecodeConfig, Sampler, decode
from omost_engine.llm.decoding.oracle import TranscriptOracle, token_bytes
from omost_engine.llm.decoding.prompt_lookup import PromptLookup
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from omost_engine.progress import CancelToken

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"
EDIT_REQUEST = "change the dragon to a dinosaur"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    from omost_engine.testing.tiny_llm import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    return tokenizer, build_model(tokenizer), tokenizer.convert_tokens_to_ids("<|eot_id|>")


def chat_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.fixture(scope="module")
def edit_turn(program_tokenizer, golden_reply) -> tuple[list[int], str]:
    first = golden_reply("01")
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "a dragon battle"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": EDIT_REQUEST},
    ]
    return chat_ids(program_tokenizer, messages), golden_reply("02")


def oracle_for(tokenizer, prompt: list[int], reply: str) -> TranscriptOracle:
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    return TranscriptOracle(tokenizer, prompt_length=len(prompt), reply=reply, stop_id=stop)


# --- prompt lookup -------------------------------------------------------------------------------


def test_draft_copies_what_followed_the_longest_matching_context() -> None:
    # "9 1 2" occurs twice; only the second is preceded by 7 like the end of the sequence.
    lookup = PromptLookup([9, 1, 2, 3, 4, 7, 9, 1, 2, 5, 6, 0, 7, 9, 1, 2])
    assert lookup.draft(3) == [5, 6, 0]


def test_a_fully_accepted_draft_continues_from_the_same_source() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 7, 8, 0, 2, 3])
    assert lookup.draft(2) == [4, 5]
    lookup.extend([4, 5])
    assert lookup.draft(2) == [6, 7]
    lookup.extend([6, 99])  # the model disagreed: the cursor is dropped, nothing matches 99
    assert lookup.draft(2) == []


def test_draft_ends_at_a_copied_stop_token() -> None:
    lookup = PromptLookup([5, 6, 7, 0, 8, 9, 5, 6], stop_ids=[0])
    assert lookup.draft(10) == [7, 0]


@pytest.mark.parametrize("grammar", [False, True], ids=["free", "grammar"])
def test_greedy_output_is_identical_with_and_without_prompt_lookup(tiny, grammar) -> None:
    from omost_engine.llm.decoding.grammar import GrammarFactory

    tokenizer, model, stop = tiny
    factory = GrammarFactory(tokenizer, stop_token_ids=[stop]) if grammar else None
    prompt = chat_ids(
        tokenizer,
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "a dragon fighting warriors"},
        ],
    )
    for draft_tokens in (5, 20):
        outputs, stats = [], []
        for lookup in (False, True):
            config = DecodeConfig(
                max_new_tokens=160,
                temperature=0.0,
                prompt_lookup=lookup,
                draft_tokens=draft_tokens,
                stop_ids=(stop,),
            )
            result = decode(
                CausalLMStepper(model),
                prompt,
                config,
                grammar=factory.matcher() if factory is not None else None,
            )
            outputs.append(result.token_ids)
            stats.append(result.stats)
        assert outputs[0] == outputs[1]
        assert (
            stats[0].forward_passes == len(outputs[0]) - stats[0].forced - (outputs[0][-1] == stop) * grammar
        )
        assert stats[1].accepted > 0  # drafts were verified and kept, not just skipped
        assert stats[1].forward_passes < stats[0].forward_passes


def test_edit_turn_takes_at_least_four_tokens_per_forward_pass(program_tokenizer, edit_turn) -> None:
    prompt, reply = edit_turn
    stop = program_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for temperature in (0.0, 0.6):
        config = DecodeConfig(temperature=temperature, draft_tokens=20, stop_ids=(stop,))
        result = decode(oracle_for(program_tokenizer, prompt, reply), prompt, config)
        assert program_tokenizer.decode(result.token_ids, skip_special_tokens=True) == reply
        # The end-of-turn token after golden 01 in the history is drafted and accepted too.
        assert result.stop_reason == "stop" and result.token_ids[-1] == stop
        assert result.stats.tokens_per_pass >= 4.0


def test_without_prompt_lookup_every_token_costs_a_pass(program_tokenizer, edit_turn) -> None:
    prompt, reply = edit_turn
    config = DecodeConfig(temperature=0.0, prompt_lookup=False, stop_ids=(program_tokenizer.eos_token_id,))
    result = decode(oracle_for(program_tokenizer, prompt, reply), prompt, config)
    assert program_tokenizer.decode(result.token_ids, skip_special_tokens=True) == reply
    assert result.stats.forward_passes == result.stats.tokens == len(result.token_ids)
    assert result.stats.drafted == 0


def test_max_new_tokens_holds_with_long_drafts(program_tokenizer, edit_turn) -> None:
    prompt, reply = edit_turn
    stop = program_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    config = DecodeConfig(temperature=0.0, draft_tokens=50, max_new_tokens=37, stop_ids=(stop,))
    oracle = oracle_for(program_tokenizer, prompt, reply)
    result = decode(oracle, prompt, config)
    assert len(result.token_ids) == 37 and result.stop_reason == "length"
    assert reply.startswith(program_tokenizer.decode(result.token_ids))


class FixedLogits:
    """A Stepper whose every position predicts the same distribution (to check sampling statistics)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.length = 0

    def feed(self, token_ids: Sequence[int], *, keep: int) -> torch.Tensor:
        self.length += len(token_ids)
        return self.logits.expand(keep, -1)

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)


def test_sampling_with_drafts_keeps_the_target_distribution() -> None:
    # top-p 0.9 keeps tokens 0-3. The prompt repeats the drafted token, so every step checks a draft
    # of it: token 3 (inside the nucleus) must come out exactly as often as without drafting, and
    # token 4 (outside it) never, although the raw logits give it 5%.
    logits = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.12, 0.05, 0.03]))
    target = Sampler(temperature=1.0, top_p=0.9, seed=0).probabilities(logits)
    assert torch.allclose(target, torch.tensor([0.4, 0.25, 0.15, 0.12, 0, 0]) / 0.92)
    trials = 2000
    for drafted in (3, 4):
        counts: Counter[int] = Counter()
        drafts = 0
        for seed in range(trials):
            config = DecodeConfig(max_new_tokens=2, temperature=1.0, top_p=0.9, seed=seed, draft_tokens=2)
            result = decode(FixedLogits(logits), [drafted] * 3, config)
            counts.update(result.token_ids)
            drafts += result.stats.drafted
        observed = torch.tensor([counts[i] / (2 * trials) for i in range(6)])
        assert drafts >= trials
        assert counts[4] == counts[5] == 0
        assert torch.allclose(observed, target, atol=0.03), (drafted, observed, target)


def test_cancel_takes_effect_at_the_next_token_even_inside_a_draft(program_tokenizer, edit_turn) -> None:
    prompt, reply = edit_turn
    cancel = CancelToken()
    seen: list[int] = []

    def on_token(token: int) -> None:
        seen.append(token)
        if len(seen) == 30:  # deep inside a long accepted draft
            cancel.cancel()

    oracle = oracle_for(program_tokenizer, prompt, reply)
    result = decode(
        oracle, prompt, DecodeConfig(temperature=0.0, draft_tokens=50), on_token=on_token, cancel=cancel
    )
    assert result.stop_reason == "cancelled"
    assert seen == result.token_ids and len(seen) == 30
    assert reply.startswith(program_tokenizer.decode(seen))
    assert oracle.length <= len(prompt) + 30  # the cache holds no token past the cancel
    assert oracle.forward_passes == result.stats.forward_passes < 10


def test_a_reused_prompt_state_gives_the_same_output(tiny) -> None:
    tokenizer, model, stop = tiny
    prompt = chat_ids(tokenizer, [{"role": "user", "content": "warriors and a dragon"}])
    config = DecodeConfig(max_new_tokens=40, temperature=0.0, stop_ids=(stop,))
    fresh = decode(CausalLMStepper(model), prompt, config)
    warm = CausalLMStepper(model)
    warm.feed(prompt[:-3], keep=1)
    reused = CausalLMStepper(model, cache=warm.cache)
    assert reused.length == len(prompt) - 3
    assert decode(reused, prompt, config).token_ids == fresh.token_ids


def test_oracle_follows_a_non_canonical_split(program_tokenizer) -> None:
    reply = "canvas = Canvas()"
    pieces = token_bytes(program_tokenizer)
    single = {piece: token for token, piece in enumerate(pieces) if len(piece) == 1}
    oracle = TranscriptOracle(program_tokenizer, prompt_length=1, reply=reply, stop_id=0, pieces=pieces)
    # Feed "canvas = " one byte at a time, a split no BPE would make: the oracle continues the text.
    spelled = [single[bytes([b])] for b in b"canvas = "]
    predicted = oracle.feed([5, *spelled], keep=len(spelled) + 1).argmax(-1).tolist()
    for fed, token in enumerate(predicted):
        assert reply.encode()[fed:].startswith(pieces[token]) and pieces[token]
    done = oracle.feed([single[bytes([b])] for b in b"Canvas()"], keep=1).argmax(-1).tolist()
    assert done == [0]  # the reply is complete: the stop id
