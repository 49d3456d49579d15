import asyncio
import random
import threading
from pathlib import Path

import pytest

from omost_engine.llm.conversation import build_messages
from omost_engine.llm.models import LLMLoader
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from omost_engine.llm.transformers_backend import IncrementalDecoder, TransformersBackend
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

GREEDY = LLMParams(max_new_tokens=128, temperature=0.0)


def test_llama3_chat_template_wraps_system_history_and_prompt(tiny_backend: TransformersBackend) -> None:
    messages = build_messages([("a cat", "```python\ncanvas = Canvas()\n```")], "make it a dog")
    text = tiny_backend.tokenizer.decode(tiny_backend.encode(messages))
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\na cat<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n```python\ncanvas = Canvas()\n```<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nmake it a dog<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_phi3_chat_template_and_end_tokens(tiny_phi3_dir: Path) -> None:
    backend = TransformersBackend(LLMLoader().get(str(tiny_phi3_dir)))
    text = backend.tokenizer.decode(backend.encode(build_messages([], "a cat")))
    assert text == f"<|system|>\n{SYSTEM_PROMPT}<|end|>\n<|user|>\na cat<|end|>\n<|assistant|>\n"
    vocab = backend.tokenizer.get_vocab()
    assert vocab["<|end|>"] in backend.eos_token_ids and vocab["<|endoftext|>"] in backend.eos_token_ids
    generation = backend.generate(build_messages([], "a cat"), GREEDY)
    assert generation.tokens > 0


def test_streamed_pieces_make_the_reply(tiny_backend: TransformersBackend) -> None:
    pieces: list[tuple[str, int]] = []
    generation = tiny_backend.generate(
        build_messages([], "a dragon"),
        LLMParams(max_new_tokens=200, seed=3),
        on_text=lambda piece, tokens: pieces.append((piece, tokens)),
    )
    assert "".join(p for p, _ in pieces) == generation.text
    counts = [n for _, n in pieces]
    assert counts == sorted(counts) and counts[-1] <= generation.tokens <= 200
    assert generation.stop_reason in ("end", "length")
    assert generation.prompt_tokens == tiny_backend.count_tokens(build_messages([], "a dragon"))


def test_same_seed_same_reply_other_seed_other_reply(tiny_backend: TransformersBackend) -> None:
    messages = build_messages([], "a dragon fighting warriors")
    runs = [tiny_backend.generate(messages, LLMParams(max_new_tokens=128, seed=s)).text for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_temperature_zero_is_greedy_whatever_the_seed(tiny_backend: TransformersBackend) -> None:
    import torch

    messages = build_messages([], "a dragon")
    first = tiny_backend.generate(messages, GREEDY.replace(seed=1))
    second = tiny_backend.generate(messages, GREEDY.replace(seed=2))
    assert first.text == second.text
    # The first greedy token is the argmax of the model's logits for the prompt.
    ids = torch.tensor([tiny_backend.encode(messages)])
    with torch.inference_mode():
        expected = int(tiny_backend.llm.model(ids).logits[0, -1].argmax())
    pieces: list[int] = []
    tiny_backend._state = None
    # Unconstrained: under the canvas grammar the first token is the forced code fence.
    tiny_backend._generate(
        tiny_backend.encode(messages), GREEDY.replace(grammar=False), pieces.append, CancelToken()
    )
    assert pieces[0] == expected


def test_max_new_tokens_stops_a_reply(tiny_backend: TransformersBackend) -> None:
    # A low temperature keeps the random model away from its end-of-turn token for a while.
    generation = tiny_backend.generate(
        build_messages([], "a"), LLMParams(max_new_tokens=128, seed=5, top_p=0.5)
    )
    assert generation.tokens <= 128
    if generation.stop_reason == "length":
        assert generation.tokens == 128


def test_cancel_stops_within_two_tokens(tiny_backend: TransformersBackend) -> None:
    cancel = CancelToken()
    seen: list[int] = []

    def on_text(piece: str, tokens: int) -> None:
        seen.append(tokens)
        if tokens >= 5:
            cancel.cancel()

    generation = tiny_backend.generate(
        build_messages([], "a dragon"),
        LLMParams(max_new_tokens=4096, seed=11),
        on_text=on_text,
        cancel=cancel,
    )
    assert generation.stop_reason == "cancelled"
    assert 5 <= generation.tokens <= 7


def test_cancel_from_another_thread(tiny_backend: TransformersBackend) -> None:
    cancel = CancelToken()
    started = threading.Event()
    result = {}

    def run() -> None:
        result["g"] = tiny_backend.generate(
            build_messages([], "a dragon"),
            LLMParams(max_new_tokens=4096, seed=2, top_p=0.3),
            on_text=lambda p, n: started.set(),
            cancel=cancel,
        )

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    cancel.cancel()
    thread.join(10)
    assert not thread.is_alive()
    assert result["g"].stop_reason in ("cancelled", "end")  # "end" only if it finished first


def test_reusing_the_previous_turns_state_keeps_the_reply(tiny_llm_dir: Path) -> None:
    llm = LLMLoader().get(str(tiny_llm_dir))
    reuse = TransformersBackend(llm, reuse_prompt_state=True)
    fresh = TransformersBackend(llm, reuse_prompt_state=False)
    first = reuse.generate(build_messages([], "a dragon"), GREEDY)
    assert first.cached_prompt_tokens == 0
    turn2 = build_messages([("a dragon", first.text or "x")], "change the dragon to a dinosaur")
    second = reuse.generate(turn2, GREEDY)
    baseline = fresh.generate(turn2, GREEDY)
    assert second.cached_prompt_tokens >= reuse.count_tokens(build_messages([], "a dragon")) - 1
    assert second.text == baseline.text


async def test_astream_yields_pieces_without_blocking_the_loop(tiny_backend: TransformersBackend) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    pieces = [
        p async for p in tiny_backend.astream(build_messages([], "a dragon"), LLMParams(max_new_tokens=300))
    ]
    task.cancel()
    assert pieces
    assert ticks > 5  # the loop kept running while the model generated


async def test_leaving_astream_early_cancels_generation(tiny_backend: TransformersBackend) -> None:
    cancel = CancelToken()
    stream = tiny_backend.astream(
        build_messages([], "a dragon"), LLMParams(max_new_tokens=4096, top_p=0.3), cancel=cancel
    )
    async for _ in stream:
        break
    await stream.aclose()
    assert cancel.cancelled
    # The generating thread has stopped: the backend's lock is free again.
    assert tiny_backend._lock.acquire(timeout=10)
    tiny_backend._lock.release()


@pytest.mark.parametrize("seed", range(5))
def test_incremental_decoder_matches_a_full_decode(tiny_backend: TransformersBackend, seed: int) -> None:
    tokenizer = tiny_backend.tokenizer
    rng = random.Random(seed)
    ids = [rng.randrange(len(tokenizer)) for _ in range(300)]
    newline = tokenizer.encode("\n", add_special_tokens=False)
    ids[50:50] = newline
    ids[120:120] = newline
    decoder = IncrementalDecoder(tokenizer)
    text = "".join(decoder.push(i) for i in ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    assert full.startswith(text) and len(full) - len(text) <= 3  # a trailing partial character may wait


def test_a_tiny_top_p_keeps_only_the_most_likely_token(tiny_backend: TransformersBackend) -> None:
    messages = build_messages([], "a dragon")
    greedy = tiny_backend.generate(messages, GREEDY)
    nucleus = tiny_backend.generate(
        messages, LLMParams(max_new_tokens=128, temperature=1.0, top_p=1e-6, seed=9)
    )
    assert nucleus.text == greedy.text


def test_a_model_without_chat_template_is_a_clear_error(tiny_llm_dir: Path) -> None:
    from omost_engine.errors import OmostError

    llm = LLMLoader().get(str(tiny_llm_dir))
    backend = TransformersBackend(llm)
    saved, llm.tokenizer.chat_template = llm.tokenizer.chat_template, None
    try:
        with pytest.raises(OmostError, match="no chat template"):
            backend.generate(build_messages([], "a cat"), GREEDY)
    finally:
        llm.tokenizer.chat_template = saved


def test_context_never_exceeds_the_models_positions(tiny_backend: TransformersBackend) -> None:
    limit = tiny_backend.llm.model.config.max_position_embeddings
    assert TransformersBackend(tiny_backend.llm, context_tokens=limit * 2).context_tokens == limit
    assert TransformersBackend(tiny_backend.llm, context_tokens=1000).context_tokens == 1000


def test_local_model_end_to_end_with_exact_trimming(tiny_backend: TransformersBackend, golden_reply) -> None:
    """The tiny model is forced to write a golden program through the real generate path; a history
    of three earlier programs must be trimmed with the tokenizer's exact counts."""
    from omost_engine.engine import ChatMessage
    from omost_engine.llm.service import ChatService
    from omost_engine.reply import parse_reply
    from omost_engine.testing.tiny_llm import forced_reply_processor

    earlier, reply = golden_reply("04"), golden_reply("03")
    history = []
    for i in range(3):
        history += [ChatMessage("user", f"version {i}"), ChatMessage("assistant", earlier)]
    minimum = tiny_backend.count_tokens(build_messages([("version 2", earlier)], "edit"))
    forced = forced_reply_processor(tiny_backend.tokenizer, reply, "<|eot_id|>")
    backend = TransformersBackend(tiny_backend.llm, context_tokens=minimum + 200, logits_processors=[forced])
    progress = []
    result = ChatService(backend=backend, reply_reserve_tokens=150).chat(
        history, "edit", LLMParams(), on_progress=progress.append
    )
    assert result.reply == reply
    assert result.layout.conditions == parse_reply(reply).conditions
    assert result.trimmed_turns == 2  # a turn is far more than the 50 spare tokens: only the latest fits
    assert result.tokens == len(tiny_backend.tokenizer.encode(reply, add_special_tokens=False)) + 1
    assert len(progress[-1].conditions) == len(result.layout.conditions)
