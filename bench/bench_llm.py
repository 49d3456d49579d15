"""LLM step overhead on a tiny model (CPU): ``python bench/bench_llm.py [--repeats N]``.

1. Streaming + incremental canvas parsing + progress (``ChatService.chat``) against a bare
   ``model.generate`` with the same model, prompt, sampling settings and token count. Both runs are
   forced (a logits processor) to write golden 01's reply, so the parser sees a real program.
2. Time to first token of a second turn (the edit "change the dragon to a dinosaur" after golden 01),
   with and without reusing the previous turn's key/value state.

Ratios are against a baseline measured in the same process; medians of ``--repeats`` runs. Part 1
counts CPU time of this process (both sides run in the calling thread), which other programs on a
shared machine disturb far less than wall time; wall time is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from omost_engine.llm.conversation import build_messages  # noqa: E402
from omost_engine.llm.models import LoadedLLM  # noqa: E402
from omost_engine.llm.service import ChatService  # noqa: E402
from omost_engine.llm.transformers_backend import TransformersBackend  # noqa: E402
from omost_engine.params import LLMParams  # noqa: E402
from omost_engine.testing.tiny_llm import build_model, build_tokenizer, forced_reply_processor  # noqa: E402

GOLDENS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "goldens"
PROMPT = "a dragon fighting warriors"
EDIT = "change the dragon to a dinosaur"
END = "<|eot_id|>"


def golden(prefix: str) -> str:
    (path,) = GOLDENS.glob(f"{prefix}_*.json")
    return json.loads(path.read_text())["bot_response"]


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_generate(
    llm: LoadedLLM, backend: TransformersBackend, reply: str, params: LLMParams
) -> tuple[Clock, int]:
    """The reference: model.generate on the same ids, no streamer, no parsing."""
    ids = torch.tensor([backend.encode(build_messages([], PROMPT))])
    forced = forced_reply_processor(llm.tokenizer, reply, END)
    torch.manual_seed(params.seed)
    with Clock() as clock, torch.inference_mode():
        out = llm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=params.max_new_tokens,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=None,
            eos_token_id=backend.eos_token_ids,
            pad_token_id=llm.tokenizer.pad_token_id,
            logits_processor=[forced],
        )
    return clock, out.shape[1] - ids.shape[1]


def service_chat(llm: LoadedLLM, reply: str, params: LLMParams) -> tuple[Clock, int, int]:
    backend = TransformersBackend(
        llm, reuse_prompt_state=False, logits_processors=[forced_reply_processor(llm.tokenizer, reply, END)]
    )
    updates = 0

    def on_progress(progress: object) -> None:
        nonlocal updates
        updates += 1

    with Clock() as clock:
        result = ChatService(backend=backend).chat([], PROMPT, params, on_progress=on_progress)
    assert result.reply == reply, "the forced reply did not come back intact"
    assert updates > 0
    return clock, result.tokens, len(result.layout.conditions)


def first_token_seconds(backend: TransformersBackend, messages: list, params: LLMParams) -> tuple[float, int]:
    start = time.perf_counter()
    first: list[float] = []

    def on_text(piece: str, tokens: int) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    generation = backend.generate(messages, params, on_text=on_text)
    return first[0], generation.cached_prompt_tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps runs steady)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    tokenizer = build_tokenizer("llama-3")
    model = build_model(tokenizer, "llama-3")
    llm = LoadedLLM(name="tiny-llama-3", model=model, tokenizer=tokenizer, quantization="none")
    reply, edit_reply = golden("01"), golden("02")
    # Plain token-by-token decoding on both sides: this measures what streaming and incremental parsing
    # cost; what drafting and the grammar save is bench_decoding.py's subject.
    params = LLMParams(
        max_new_tokens=4096, temperature=0.6, top_p=0.9, seed=12345, prompt_lookup=False, grammar=False
    )
    plain = TransformersBackend(llm, reuse_prompt_state=False)

    # 1. Streaming + incremental parsing vs bare generate, interleaved so drift hits both alike.
    service_chat(llm, reply, params)  # warm-up
    bare_generate(llm, plain, reply, params)
    bare_runs, our_runs = [], []
    for repeat in range(args.repeats):
        for side in ("bare", "ours") if repeat % 2 == 0 else ("ours", "bare"):  # alternate the order
            if side == "bare":
                clock, bare_tokens = bare_generate(llm, plain, reply, params)
                bare_runs.append(clock)
            else:
                clock, tokens, conditions = service_chat(llm, reply, params)
                our_runs.append(clock)
    assert tokens == bare_tokens, (tokens, bare_tokens)
    print(
        f"model: tiny Llama-3-style ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{args.threads} CPU thread(s), median of {args.repeats}"
    )
    print(f"golden 01 reply: {tokens} tokens, {conditions} conditions")
    for kind in ("cpu", "wall"):
        bare = statistics.median(getattr(c, kind) for c in bare_runs)
        ours = statistics.median(getattr(c, kind) for c in our_runs)
        print(
            f"{kind:>4}: bare model.generate {bare:.3f} s ({tokens / bare:.0f} tokens/s); "
            f"ChatService (stream + incremental parse) {ours:.3f} s; ratio {ours / bare:.3f}x"
        )

    # 2. Time to first token of the edit turn, with and without the previous turn's state.
    turn2 = build_messages([(PROMPT, reply)], EDIT)
    history_len = plain.count_tokens(turn2)
    cold_times, warm_times, cached = [], [], 0
    for _ in range(min(args.repeats, 3)):
        cold_backend = TransformersBackend(
            llm,
            reuse_prompt_state=False,
            logits_processors=[forced_reply_processor(tokenizer, edit_reply, END)],
        )
        cold_times.append(first_token_seconds(cold_backend, turn2, params)[0])
        warm_backend = TransformersBackend(
            llm, reuse_prompt_state=True, logits_processors=[forced_reply_processor(tokenizer, reply, END)]
        )
        ChatService(backend=warm_backend).chat([], PROMPT, params)  # turn 1 leaves its state behind
        warm_backend.logits_processors = [forced_reply_processor(tokenizer, edit_reply, END)]
        seconds, cached = first_token_seconds(warm_backend, turn2, params)
        warm_times.append(seconds)
    cold, warm = statistics.median(cold_times), statistics.median(warm_times)
    print(f"second turn prompt: {history_len} tokens, {cached} reused from turn 1")
    print(f"time to first token, fresh prompt:  {cold * 1000:.1f} ms")
    print(
        f"time to first token, reused state:  {warm * 1000:.1f} ms  ratio {warm / cold:.3f}x "
        f"(saves {(cold - warm) * 1000:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
