"""Forward passes per generated token for each decoding option, on the README transcript.

First turn: the system prompt and the request, reply = golden 01. Edit turn: the same plus golden 01
as the assistant's reply and "change the dragon to a dinosaur", reply = golden 02. The model is an
oracle that puts all its probability on the transcript's next token (on a byte-level BPE trained
here on the canvas programs of the goldens), so the counts measure the decoding scheme alone.
Then the per-token cost of the grammar constraint on the tiny random Llama, against plain decoding
in the same process, and the per-token cost of sampling + grammar with a real 128k vocabulary
(the real Llama-3 tokenizer from scripts/fetch_real_formats.py): the top-p sampler against the
full-sort one it replaced.

    python bench/bench_decoding.py [--device cuda] [--model PATH] [--only-sampler]

``--model PATH`` takes any local model folder (config, weights, tokenizer with a chat template): the
sampler + grammar cost is then measured on that model's own logits for the transcript (one
teacher-forced forward pass), with its tokenizer and vocabulary.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omost_engine.llm.decoding import loop
from omost_engine.llm.decoding.grammar import CanvasNames, GrammarFactory, GrammarLimits
from omost_engine.llm.decoding.loop import CausalLMStepper, DecodeConfig, decode
from omost_engine.llm.decoding.oracle import TranscriptOracle, token_bytes, train_tokenizer
from omost_engine.llm.decoding.prompt_lookup import PromptLookup
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from omost_engine.progress import CancelToken

GOLDENS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "goldens"
FIRST_REQUEST = "generate an image of the fierce battle of warriors and the dragon"
EDIT_REQUEST = "change the dragon to a dinosaur"


def _reply(case: str) -> str:
    return json.loads((GOLDENS / f"{case}.json").read_text())["bot_response"]


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def transcript(tokenizer: Any) -> dict[str, tuple[list[int], str]]:
    first, edit = _reply("01_readme_dragon_battle"), _reply("02_readme_dinosaur_edit")
    system = {"role": "system", "content": SYSTEM_PROMPT}
    turn1 = [system, {"role": "user", "content": FIRST_REQUEST}]
    turn2 = [*turn1, {"role": "assistant", "content": first}, {"role": "user", "content": EDIT_REQUEST}]
    return {
        "first turn": (_chat_ids(tokenizer, turn1), first),
        "edit turn": (_chat_ids(tokenizer, turn2), edit),
    }


class TransformersDraftRule(PromptLookup):
    """The draft rule of transformers' ``PromptLookupCandidateGenerator`` (``generate(...,
    prompt_lookup_num_tokens=K)``): the earliest earlier occurrence of the last two tokens, else of the
    last one, that has something after it; no cursor. For comparison with this project's rule."""

    def draft(self, max_tokens: int) -> list[int]:
        seq = self.tokens
        for size in (2, 1):
            if len(seq) <= size:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], size)
            for start in np.flatnonzero((windows == seq[-size:]).all(axis=1)) + size:
                proposal = seq[start : start + max_tokens].tolist()
                if proposal:
                    ends = [i for i, token in enumerate(proposal) if token in self.stop_ids]
                    return proposal[: ends[0] + 1] if ends else proposal
        return []


MODES: list[tuple[str, dict[str, Any]]] = [
    ("plain", dict(prompt_lookup=False, grammar=False)),
    ("prompt lookup K=10", dict(prompt_lookup=True, draft_tokens=10, grammar=False)),
    ("prompt lookup K=20", dict(prompt_lookup=True, draft_tokens=20, grammar=False)),
    ("prompt lookup K=50", dict(prompt_lookup=True, draft_tokens=50, grammar=False)),
    ("grammar, forced runs", dict(prompt_lookup=False, grammar=True)),
    ("both K=20", dict(prompt_lookup=True, draft_tokens=20, grammar=True)),
    ("both K=20, T=0.6 top_p=0.9", dict(prompt_lookup=True, draft_tokens=20, grammar=True, temperature=0.6)),
    (
        "transformers' draft rule K=10",
        dict(prompt_lookup=True, draft_tokens=10, grammar=False, drafter=TransformersDraftRule),
    ),
    (
        "transformers' draft rule K=20",
        dict(prompt_lookup=True, draft_tokens=20, grammar=False, drafter=TransformersDraftRule),
    ),
]


def forward_pass_table(names: CanvasNames) -> None:
    texts = [p.read_text() for p in sorted(GOLDENS.glob("*.py"))] + [SYSTEM_PROMPT]
    tokenizer = train_tokenizer(texts, vocab_size=2048)
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    factory = GrammarFactory(tokenizer, names=names, stop_token_ids=[stop])
    pieces = token_bytes(tokenizer)
    turns = transcript(tokenizer)
    print(
        f"tokenizer: byte-level BPE, {len(tokenizer)} tokens; replies: "
        + ", ".join(
            f"{turn} {len(tokenizer.encode(reply, add_special_tokens=False))} tokens"
            for turn, (_, reply) in turns.items()
        )
    )
    print(f"{'mode':30} " + " ".join(f"{turn + ' tok/pass':>20}" for turn in turns))
    for label, options in MODES:
        cells = []
        for prompt, reply in turns.values():
            oracle = TranscriptOracle(
                tokenizer, prompt_length=len(prompt), reply=reply, stop_id=stop, pieces=pieces
            )
            config = DecodeConfig(
                max_new_tokens=4096,
                temperature=options.get("temperature", 0.0),
                top_p=0.9,
                prompt_lookup=options["prompt_lookup"],
                draft_tokens=options.get("draft_tokens", 20),
                stop_ids=(stop,),
            )
            # The loop builds its drafter by this name; the comparison rows swap the rule in.
            loop.PromptLookup = options.get("drafter", PromptLookup)  # type: ignore[misc]
            try:
                result = decode(
                    oracle, prompt, config, grammar=factory.matcher() if options["grammar"] else None
                )
            finally:
                loop.PromptLookup = PromptLookup  # type: ignore[misc]
            same = tokenizer.decode(result.token_ids, skip_special_tokens=True) == reply
            cells.append(f"{result.stats.tokens_per_pass:>14.2f}" + (" " * 6 if same else " WRONG"))
        print(f"{label:30} " + " ".join(cells))


def _cancel_after(tokens: int, cancel: CancelToken) -> Callable[[int], None]:
    seen = 0

    def on_token(token: int) -> None:
        nonlocal seen
        seen += 1
        if seen >= tokens:
            cancel.cancel()

    return on_token


def grammar_overhead(names: CanvasNames, *, device: str, repeats: int = 3) -> None:
    from omost_engine.testing.tiny_llm import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer).to(device)
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    factory = GrammarFactory(tokenizer, names=names, limits=GrammarLimits(), stop_token_ids=[stop])
    prompt = transcript(tokenizer)["first turn"][0]
    labels = ("plain", "grammar", "grammar+forced")
    # Thread CPU time is what one generation costs, whatever else the machine runs; wall time too.
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    wall: dict[str, list[float]] = {label: [] for label in labels}
    for seed in range(repeats):
        for label in labels:
            grammar = factory.matcher() if label != "plain" else None
            # The same 400 tokens for every run (a cancel, not max_new_tokens: near the budget the
            # grammar closes the program early, which would shorten the grammar runs).
            config = DecodeConfig(
                max_new_tokens=4096,
                temperature=0.6,
                top_p=0.9,
                seed=seed,
                prompt_lookup=False,
                forced_runs=label == "grammar+forced",
                stop_ids=(stop,) if grammar else (),
            )
            cancel = CancelToken()
            started, started_cpu = time.perf_counter(), time.thread_time()
            result = decode(
                CausalLMStepper(model),
                prompt,
                config,
                grammar=grammar,
                on_token=_cancel_after(400, cancel),
                cancel=cancel,
            )
            if device == "cuda":
                torch.cuda.synchronize()
            tokens = max(1, result.stats.tokens)
            cpu[label].append((time.thread_time() - started_cpu) / tokens)
            wall[label].append((time.perf_counter() - started) / tokens)
    base_cpu, base_wall = min(cpu["plain"]), min(wall["plain"])
    print(
        f"tiny Llama ({len(tokenizer)} tokens, {device}, 1 thread), per generated token, fastest of {repeats} (the least disturbed by other work):"
    )
    print(f"  {'plain':15} cpu {base_cpu * 1e3:.3f} ms   wall {base_wall * 1e3:.3f} ms")
    for label in labels[1:]:
        c, w = min(cpu[label]), min(wall[label])
        print(
            f"  {label:15} cpu {c * 1e3:.3f} ms = x{c / base_cpu:.3f}   wall {w * 1e3:.3f} ms = x{w / base_wall:.3f}"
        )


def wall_clock(names: CanvasNames, *, device: str, repeats: int = 3) -> None:
    """Seconds per turn on a real model: the tiny Llama, made to write the transcript by a logits
    processor (forced runs are off under a processor, so "both" shows the grammar's cost, not its
    forced runs). Modes take turns within each repeat, so machine load hits them alike."""
    from omost_engine.llm.decoding.loop import processors_hook
    from omost_engine.testing.tiny_llm import build_model, build_tokenizer, forced_reply_processor

    tokenizer = build_tokenizer()
    model = build_model(tokenizer).to(device)
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    factory = GrammarFactory(tokenizer, names=names, stop_token_ids=[stop])
    modes = [
        ("plain", False, 20, False),
        ("prompt lookup K=10", True, 10, False),
        ("prompt lookup K=20", True, 20, False),
        ("both K=20", True, 20, True),
    ]
    turns = transcript(tokenizer)
    times: dict[tuple[str, str], list[float]] = {(m[0], t): [] for m in modes for t in turns}
    for _ in range(repeats):
        for label, lookup, draft, grammar in modes:
            for turn, (prompt, reply) in turns.items():
                hook = processors_hook([forced_reply_processor(tokenizer, reply, "<|eot_id|>")])
                config = DecodeConfig(
                    temperature=0.0, prompt_lookup=lookup, draft_tokens=draft, stop_ids=(stop,)
                )
                started = time.perf_counter()
                result = decode(
                    CausalLMStepper(model),
                    prompt,
                    config,
                    logits_hook=hook,
                    grammar=factory.matcher() if grammar else None,
                )
                if device == "cuda":
                    torch.cuda.synchronize()
                times[label, turn].append(time.perf_counter() - started)
                assert tokenizer.decode(result.token_ids, skip_special_tokens=True) == reply
    print(
        f"tiny Llama forced to write the transcript ({device}, 1 thread), seconds per turn, fastest of {repeats}:"
    )
    print(f"{'mode':30} " + " ".join(f"{turn:>16}" for turn in turns))
    for label, *_ in modes:
        cells = []
        for turn in turns:
            seconds, base = min(times[label, turn]), min(times["plain", turn])
            cells.append(f"{seconds:7.2f} s x{base / seconds:5.2f}")
        print(f"{label:30} " + " ".join(f"{cell:>16}" for cell in cells))


def _full_sort_pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """The sampler before omost_engine.llm.decoding.sampling: a full sort of the vocabulary per token."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(ordered, dim=-1)
    kept = max(1, int(torch.count_nonzero(cumulative - ordered < top_p)))
    ordered, order, cumulative = ordered[:kept], order[:kept], cumulative[:kept]
    threshold = torch.rand(1, generator=generator) * cumulative[-1]
    return int(order[torch.searchsorted(cumulative, threshold, right=True).clamp_(max=kept - 1)])


def sampler_cost(
    tokenizer: Any,
    vocab: int,
    stop_ids: list[int],
    rows: torch.Tensor,
    tokens: list[int],
    *,
    label: str,
    repeats: int = 3,
) -> None:
    """Per token: grammar mask + top-p pick + accept, for each row of ``rows`` (the logits before each
    transcript token); the transcript token is accepted whatever is drawn, so every row is used."""
    from omost_engine.llm.decoding.sampling import Sampler

    factory = GrammarFactory(tokenizer, vocab_size=vocab, stop_token_ids=stop_ids)
    results: dict[str, list[float]] = {
        "grammar + top-p (topk)": [],
        "grammar + top-p (full sort)": [],
        "grammar mask + accept only": [],
    }
    for _ in range(repeats):
        for name in results:
            state = factory.matcher()
            sampler = Sampler(temperature=0.6, top_p=0.9, seed=1)
            generator = torch.Generator().manual_seed(1)
            started = time.thread_time()
            for row, token in zip(rows, tokens, strict=True):
                masked = state.mask_logits(row)
                if name == "grammar + top-p (topk)":
                    sampler.pick(masked)
                elif name == "grammar + top-p (full sort)":
                    _full_sort_pick(masked, 0.6, 0.9, generator)
                if not state.accept(token):
                    raise RuntimeError(f"the grammar refused transcript token {token}")
            results[name].append((time.thread_time() - started) / len(tokens))
    print(
        f"sampling + grammar per token, {label} ({vocab} tokens, 1 thread, {len(tokens)} tokens, "
        f"CPU time, fastest of {repeats}):"
    )
    base = min(results["grammar + top-p (full sort)"])
    for name, values in results.items():
        print(f"  {name:30} {min(values) * 1e3:7.3f} ms   x{min(values) / base:.3f} of the full sort")


def _reply_ids(tokenizer: Any, stop_ids: list[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids up to the end-of-turn token) of the first transcript turn."""
    prompt, reply = transcript(tokenizer)["first turn"]
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": FIRST_REQUEST},
        {"role": "assistant", "content": reply},
    ]
    encoded = tokenizer.apply_chat_template(messages, tokenize=True)
    full = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    rest = full[len(prompt) :]
    end = next(i for i, t in enumerate(rest) if t in stop_ids)
    return prompt, rest[: end + 1]


def sampler_cost_real_vocab(repeats: int) -> None:
    """The real Llama-3 tokenizer (128,256 tokens); logits shaped like a trained model's: N(0, 2.5)
    over the vocabulary with the transcript token at 25 (random weights give a flat distribution
    instead, the worst case: see --model)."""
    from omost_engine.testing.real_formats import ensure_real_formats, llama3_tokenizer

    folder, why = ensure_real_formats(fetch=True)
    if folder is None:
        print(f"sampling + grammar with a 128k vocabulary: skipped ({why})")
        return
    tokenizer = llama3_tokenizer(folder)
    stops = [tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    _, tokens = _reply_ids(tokenizer, stops)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(len(tokens), 128_256, generator=generator) * 2.5
    rows[torch.arange(len(tokens)), torch.tensor(tokens)] = 25.0
    sampler_cost(
        tokenizer,
        128_256,
        stops,
        rows,
        tokens,
        label="real Llama-3 tokenizer, confident logits",
        repeats=repeats,
    )


def sampler_cost_model(path: str, repeats: int) -> None:
    """Sampling + grammar on a local model's own logits for golden 01 (one teacher-forced pass)."""
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(LLMLoader(allow_cpu=True).get(path))
    vocab = max(len(backend.tokenizer), int(backend.llm.model.config.vocab_size))
    prompt, tokens = _reply_ids(backend.tokenizer, backend.eos_token_ids)
    ids = torch.tensor([prompt + tokens[:-1]], device=backend.llm.device)
    with torch.inference_mode():
        logits = backend.llm.model(input_ids=ids, logits_to_keep=len(tokens)).logits[0].float().cpu()
    sampler_cost(
        backend.tokenizer,
        vocab,
        backend.eos_token_ids,
        logits,
        tokens,
        label=f"model {path}",
        repeats=repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="a local model folder: measure sampling + grammar on its logits")
    parser.add_argument("--only-sampler", action="store_true", help="only the sampling + grammar cost")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per generation: the timings compare like with like
    names = CanvasNames.from_tables()
    if not args.only_sampler:
        forward_pass_table(names)
        grammar_overhead(names, device=args.device, repeats=args.repeats)
        wall_clock(names, device=args.device)
    sampler_cost_real_vocab(repeats=3)
    if args.model:
        sampler_cost_model(args.model, repeats=3)


if __name__ == "__main__":
    main()
