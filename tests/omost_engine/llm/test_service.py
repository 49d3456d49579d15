import asyncio
import threading

import pytest

from omost_engine.engine import ChatMessage, ChatResult
from omost_engine.errors import CancelledError, OmostError
from omost_engine.llm.scripted import ScriptedBackend, split_tokens
from omost_engine.llm.service import ChatService, InvalidReplyError
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken, LLMProgress
from omost_engine.reply import parse_reply

PARAMS = LLMParams()


def test_chat_returns_the_parsed_layout_and_progress(golden_reply) -> None:
    reply = golden_reply("01")
    backend = ScriptedBackend([reply], name="scripted-omost")
    progress: list[LLMProgress] = []
    result = ChatService(backend=backend).chat(
        [], "a dragon fighting warriors", PARAMS, on_progress=progress.append
    )
    assert isinstance(result, ChatResult)
    assert result.reply == reply
    assert result.layout.conditions == parse_reply(reply).conditions
    assert result.model == "scripted-omost"
    assert result.tokens == len(split_tokens(reply))
    assert result.layout.meta["llm"] == "scripted-omost"
    assert result.layout.meta["llm_params"]["seed"] == PARAMS.seed
    assert backend.calls[0][0]["content"] == SYSTEM_PROMPT
    assert backend.calls[0][-1] == {"role": "user", "content": "a dragon fighting warriors"}
    # Progress: one report per token, text growing, regions appearing as their calls complete.
    assert [p.tokens for p in progress] == list(range(1, result.tokens + 1))
    assert progress[-1].text == reply
    counts = [len(p.conditions) for p in progress]
    assert counts == sorted(counts) and counts[0] == 0
    assert counts[-1] == len(result.layout.conditions)
    assert all(p.tokens_per_second > 0 for p in progress)


def test_an_edit_turn_sends_the_previous_program(golden_reply) -> None:
    first, second = golden_reply("01"), golden_reply("02")
    backend = ScriptedBackend([second])
    history = [ChatMessage("user", "a dragon fighting warriors"), ChatMessage("assistant", first)]
    result = ChatService(backend=backend).chat(history, "change the dragon to a dinosaur", PARAMS)
    assert [m["role"] for m in backend.calls[0]] == ["system", "user", "assistant", "user"]
    assert backend.calls[0][2]["content"] == first
    assert "dinosaur" in result.layout.conditions[0].prefixes[0].lower()


def test_a_reply_without_a_program_is_an_error_that_keeps_the_reply() -> None:
    backend = ScriptedBackend(["I cannot draw that, sorry."])
    with pytest.raises(InvalidReplyError) as info:
        ChatService(backend=backend).chat([], "a cat", PARAMS)
    assert isinstance(info.value, OmostError)
    assert info.value.reply == "I cannot draw that, sorry."
    assert "no canvas program" in str(info.value)


def test_an_invalid_program_reports_the_interpreter_error(golden_reply) -> None:
    reply = golden_reply("30")  # an invalid location
    with pytest.raises(InvalidReplyError) as info:
        ChatService(backend=ScriptedBackend([reply])).chat([], "a cat", PARAMS)
    assert info.value.reply == reply and info.value.cause.line is not None
    assert str(info.value).count("line ") == 1  # the line number is said once
    assert info.value.line == info.value.cause.line


def test_bad_parameters_and_prompts_are_refused_before_generating() -> None:
    backend = ScriptedBackend(["x"])
    service = ChatService(backend=backend)
    with pytest.raises(OmostError, match="temperature"):
        service.chat([], "a cat", LLMParams(temperature=3.0))
    with pytest.raises(OmostError, match="prompt is empty"):
        service.chat([], "  ", PARAMS)
    assert backend.calls == []


def test_cancel_stops_the_turn(golden_reply) -> None:
    cancel = CancelToken()
    backend = ScriptedBackend([golden_reply("01")], delay=0.001)

    def on_progress(progress: LLMProgress) -> None:
        if progress.tokens == 10:
            cancel.cancel()

    with pytest.raises(CancelledError):
        ChatService(backend=backend).chat([], "a cat", PARAMS, on_progress=on_progress, cancel=cancel)


def test_trimming_is_reported(golden_reply) -> None:
    reply = golden_reply("01")
    history = []
    for i in range(6):
        history += [ChatMessage("user", f"version {i}"), ChatMessage("assistant", reply)]
    backend = ScriptedBackend([reply], context_tokens=6000)
    result = ChatService(backend=backend, reply_reserve_tokens=1000).chat(history, "again", PARAMS)
    assert result.trimmed_turns > 0
    assert any("oldest" in note for note in result.notes)
    sent = backend.calls[0]
    assert sent[0]["content"] == SYSTEM_PROMPT and sent[-2]["content"] == reply
    assert sent[1]["content"] == f"version {result.trimmed_turns}"


def test_a_cut_reply_says_so(golden_reply) -> None:
    reply = golden_reply("01")
    with pytest.raises(InvalidReplyError):
        ChatService(backend=ScriptedBackend([reply])).chat([], "a cat", LLMParams(max_new_tokens=128))
    # A program that is complete within the limit carries a note when the limit was reached anyway.
    result = ChatService(backend=ScriptedBackend([reply + "\n" + "trailing words " * 200])).chat(
        [], "a cat", LLMParams(max_new_tokens=len(split_tokens(reply)) + 10)
    )
    assert any("max_new_tokens" in note for note in result.notes)


async def test_stream_yields_progress_then_holds_the_result(golden_reply) -> None:
    reply = golden_reply("01")
    service = ChatService(backend=ScriptedBackend([reply]))
    stream = service.stream([], "a dragon", PARAMS)
    loop_thread = threading.get_ident()
    tokens = [p.tokens async for p in stream]
    assert threading.get_ident() == loop_thread
    assert tokens == list(range(1, len(split_tokens(reply)) + 1))
    assert stream.result is not None and stream.result.reply == reply


async def test_leaving_the_stream_early_cancels_the_turn(golden_reply) -> None:
    backend = ScriptedBackend([golden_reply("01")], delay=0.01)
    stream = ChatService(backend=backend).stream([], "a dragon", PARAMS)
    iterator = aiter(stream)
    await anext(iterator)
    await iterator.aclose()
    assert stream.cancel.cancelled
    assert stream.result is None


async def test_stream_errors_reach_the_consumer() -> None:
    stream = ChatService(backend=ScriptedBackend(["no program"])).stream([], "a cat", PARAMS)
    with pytest.raises(InvalidReplyError):
        async for _ in stream:
            await asyncio.sleep(0)
