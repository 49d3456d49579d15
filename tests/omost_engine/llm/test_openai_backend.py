import asyncio
import contextlib
import json
import socket
import threading

import pytest
from aiohttp import web

from omost_engine.errors import OmostError
from omost_engine.llm.conversation import build_messages
from omost_engine.llm.openai_backend import OpenAIBackend, chat_completions_url
from omost_engine.llm.scripted import split_tokens
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

PARAMS = LLMParams(seed=42, temperature=0.3, top_p=0.8, max_new_tokens=512)


def sse(data: object) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class FakeOpenAIServer:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions protocol, run in its own thread
    (the backend under test blocks, as it does in the bot's worker thread)."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.mode = "ok"
        self.failures_left = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.stop = asyncio.Event()  # ends every stall at close
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        self.runner = web.AppRunner(app)
        self._loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def stall(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), 30)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.stop.set)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "omost-llama-3-8b-q8", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.failures_left:
            self.failures_left -= 1
            return web.json_response({"error": {"message": "model is loading"}}, status=503)
        if self.mode == "404":
            return web.json_response({"error": {"message": "model 'x' not found", "type": "invalid_request"}},
                                     status=404)
        if self.mode == "500":
            return web.Response(text="Internal Server Error: CUDA out of memory", status=500)
        if self.mode == "stall-before-headers":
            await self.stall()
        if self.mode == "json":
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": self.reply},
                                                   "finish_reason": "stop"}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": keep-alive\n\n")
        tokens = split_tokens(self.reply)
        for i, token in enumerate(tokens):
            if self.mode == "stall" and i == 5:
                await self.stall()
            if self.mode == "error-event" and i == 3:
                await response.write(sse({"error": {"message": "generation failed"}}))
                return response
            await response.write(sse({"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}))
        finish = "length" if self.mode == "length" else "stop"
        await response.write(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture(scope="module")
def server(golden_reply):
    srv = FakeOpenAIServer(golden_reply("01"))
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _reset(server: FakeOpenAIServer):
    server.mode, server.failures_left = "ok", 0
    server.requests.clear()
    server.headers.clear()


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


def test_streams_the_reply_and_passes_the_parameters(server: FakeOpenAIServer) -> None:
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


def test_model_defaults_to_the_servers_first(server: FakeOpenAIServer) -> None:
    backend = OpenAIBackend(server.base)
    backend.generate(build_messages([], "a"), PARAMS)
    assert server.requests[0]["model"] == "omost-llama-3-8b-q8"
    assert "omost-llama-3-8b-q8" in backend.name


def test_length_finish_and_non_streaming_servers(server: FakeOpenAIServer) -> None:
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
def test_http_failures_are_clear_errors(server: FakeOpenAIServer, mode: str, pattern: str) -> None:
    server.mode = mode
    with pytest.raises(OmostError, match=pattern) as info:
        OpenAIBackend(server.base, model="m", retries=0).generate(build_messages([], "a"), PARAMS)
    assert info.value.parameter == "llm_endpoint"
    assert len(server.requests) == 1  # client errors are not retried


def test_a_server_that_is_still_loading_is_retried(server: FakeOpenAIServer) -> None:
    server.failures_left = 2
    backend = OpenAIBackend(server.base, model="m", retries=2, retry_delay=0.01)
    assert backend.generate(build_messages([], "a"), PARAMS).text == server.reply
    assert len(server.requests) == 3


@pytest.mark.parametrize("mode", ["stall", "stall-before-headers"])
def test_a_stalled_server_times_out(server: FakeOpenAIServer, mode: str) -> None:
    server.mode = mode
    backend = OpenAIBackend(server.base, model="m", read_timeout=0.3, retries=2)
    with pytest.raises(OmostError, match=r"stopped sending for 0.3 s"):
        backend.generate(build_messages([], "a"), PARAMS)
    assert len(server.requests) == 1


def test_cancel_interrupts_a_stalled_read(server: FakeOpenAIServer) -> None:
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


async def test_async_stream_from_the_event_loop(server: FakeOpenAIServer) -> None:
    backend = OpenAIBackend(server.base, model="m")
    pieces = [p async for p in backend.astream(build_messages([], "a"), PARAMS)]
    assert "".join(pieces) == server.reply


async def test_blocking_generate_refuses_to_run_on_the_event_loop(server: FakeOpenAIServer) -> None:
    with pytest.raises(RuntimeError, match="worker thread"):
        OpenAIBackend(server.base, model="m").generate(build_messages([], "a"), PARAMS)
