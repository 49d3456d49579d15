import socket

import pytest

from omost_engine.errors import OmostError
from omost_engine.llm.conversation import build_messages
from omost_engine.llm.openai_backend import OpenAIBackend, chat_completions_url
from omost_engine.llm.scripted import split_tokens
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

PARAMS = LLMParams(seed=42, temperature=0.3, top_p=0.8, max_new_tokens=512)


@pytest.fixture
def server(openai_server):
    return openai_server


@pytest.mark.parametrize(("base", "url"), [
    ("http://h:8000", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/", "http://h:8000/v1/chat/completions"),
    ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
    ("https://h/api/v1/", "https://h/api/v1/chat/completions"),
    ("http://h:11434/v1/chat/completions", "http://h:11434/v1/chat/completions"),
])
def test_base_urls(base: str, url: str) -> None:
    assert chat_completions_url(base) == url


@pytest.mark.parametrize("base", ["localhost:8000", "ftp://h/v1", "http://", ""])
def test_bad_endpoint_urls(base: str) -> None:
    with pytest.raises(OmostError, match="http"):
        chat_completions_url(base)


def test_streams_the_reply_and_passes_the_parameters(server) -> None:
    backend = OpenAIBackend(server.base + "/v1", model="omost", api_key="sk-test")
    pieces: list[str] = []
    generation = backend.generate(build_messages([], "a dragon"), PARAMS, on_text=lambda p, n: pieces.append(p))
    assert generation.text == server.reply == "".join(pieces)
    assert generation.stop_reason == "end"
    assert generation.tokens == len(split_tokens(server.reply))
    body = server.requests[0]
    assert body["model"] == "omost" and body["stream"] is True
    assert (body["seed"], body["temperature"], body["top_p"], body["max_tokens"]) == (42, 0.3, 0.8, 512)
    assert body["messages"] == build_messages([], "a dragon")
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_model_defaults_to_the_servers_first(server) -> None:
    backend = OpenAIBackend(server.base)
    backend.generate(build_messages([], "a"), PARAMS)
    assert server.requests[0]["model"] == "omost-llama-3-8b-q8"
    assert "omost-llama-3-8b-q8" in backend.name


def test_length_finish_and_non_streaming_servers(server) -> None:
    backend = OpenAIBackend(server.base, model="m")
    server.mode = "length"
    assert backend.generate(build_messages([], "a"), PARAMS).stop_reason == "length"
    server.mode = "json"
    generation = backend.generate(build_messages([], "a"), PARAMS)
    assert generation.text == server.reply and generation.stop_reason == "end"


@pytest.mark.parametrize(("mode", "pattern"), [
    ("404", r"HTTP 404: model 'x' not found"),
    ("500", r"HTTP 500: Internal Server Error: CUDA out of memory"),
    ("error-event", r"reported an error: generation failed"),
])
def test_http_failures_are_clear_errors(server, mode: str, pattern: str) -> None:
    server.mode = mode
    with pytest.raises(OmostError, match=pattern) as info:
        OpenAIBackend(server.base, model="m", retries=0).generate(build_messages([], "a"), PARAMS)
    assert info.value.parameter == "llm_endpoint"
    assert len(server.requests) == 1  # client errors are not retried


def test_a_server_that_is_still_loading_is_retried(server) -> None:
    server.failures_left = 2
    backend = OpenAIBackend(server.base, model="m", retries=2, retry_delay=0.01)
    assert backend.generate(build_messages([], "a"), PARAMS).text == server.reply
    assert len(server.requests) == 3


@pytest.mark.parametrize("mode", ["stall", "stall-before-headers"])
def test_a_stalled_server_times_out(server, mode: str) -> None:
    server.mode = mode
    backend = OpenAIBackend(server.base, model="m", read_timeout=0.3, retries=2)
    with pytest.raises(OmostError, match=r"stopped sending for 0.3 s"):
        backend.generate(build_messages([], "a"), PARAMS)
    assert len(server.requests) == 1


def test_cancel_interrupts_a_stalled_read(server) -> None:
    server.mode = "stall"
    cancel = CancelToken()
    backend = OpenAIBackend(server.base, model="m", read_timeout=60)
    generation = backend.generate(build_messages([], "a"), PARAMS, cancel=cancel,
                                  on_text=lambda p, n: n == 5 and cancel.cancel())
    assert generation.stop_reason == "cancelled"
    assert generation.tokens == 5


def test_an_unreachable_endpoint_is_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", model="m", retries=2, retry_delay=0.01)
    with pytest.raises(OmostError, match=r"cannot reach the LLM endpoint .* after 3 tries"):
        backend.generate(build_messages([], "a"), PARAMS)


async def test_async_stream_from_the_event_loop(server) -> None:
    backend = OpenAIBackend(server.base, model="m")
    pieces = [p async for p in backend.astream(build_messages([], "a"), PARAMS)]
    assert "".join(pieces) == server.reply


async def test_blocking_generate_refuses_to_run_on_the_event_loop(server) -> None:
    with pytest.raises(RuntimeError, match="worker thread"):
        OpenAIBackend(server.base, model="m").generate(build_messages([], "a"), PARAMS)
