"""Tiny LLM folders and backends shared by the LLM tests (built once per test session)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from pathlib import Path

import pytest
from aiohttp import web

from omost_engine.llm.scripted import split_tokens

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omost_engine.testing.tiny_llm import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama-3")


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omost_engine.testing.tiny_llm import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-phi-3", "phi-3")


@pytest.fixture(scope="session")
def tiny_backend(tiny_llm_dir: Path):
    """A TransformersBackend on the tiny Llama-3-style model (shared: do not leave it cancelled)."""
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.transformers_backend import TransformersBackend

    return TransformersBackend(LLMLoader().get(str(tiny_llm_dir)))


@pytest.fixture(scope="session")
def golden_reply():
    """``golden_reply("01")``: the exact LLM reply of a golden case."""
    import json

    def read(prefix: str) -> str:
        (path,) = GOLDENS.glob(f"{prefix}_*.json")
        return json.loads(path.read_text())["bot_response"]

    return read


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: more threads only add contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def program_tokenizer():
    """A BPE trained on the goldens' programs: realistic token counts for the transcript."""
    from omost_engine.llm.decoding.oracle import train_tokenizer
    from omost_engine.llm.system_prompt import SYSTEM_PROMPT

    return train_tokenizer([p.read_text() for p in sorted(GOLDENS.glob("*.py"))] + [SYSTEM_PROMPT])


def sse(data: object) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class FakeOpenAIServer:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions protocol, run in its own thread
    (the backend under test blocks, as it does in the bot's worker thread)."""

    def __init__(self, reply: str) -> None:
        self.reply = self.default_reply = reply
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.mode = "ok"
        self.failures_left = 0
        self.failure_status = 503  # what each of the failures_left is answered with
        self.retry_after: str | None = None  # the failures' Retry-After header
        self.owned_by: str | None = None  # "/v1/models" owned_by: "vllm", "llamacpp", ...
        self.version: str | None = None  # vLLM's GET /version; None: 404
        self.refuse_fields: tuple[str, ...] = ()  # answered 400 as a strict server (OpenAI's wording)
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
        app.router.add_get("/version", self.server_version)
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
        model = {"id": "omost-llama-3-8b-q8", "object": "model"}
        if self.owned_by is not None:
            model["owned_by"] = self.owned_by
        return web.json_response({"object": "list", "data": [model]})

    async def server_version(self, request: web.Request) -> web.Response:
        if self.version is None:
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"version": self.version})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.failures_left:
            self.failures_left -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
            message = {503: "model is loading", 429: "rate limit reached", 500: "internal error"}.get(
                self.failure_status, "failed"
            )
            return web.json_response(
                {"error": {"message": message}}, status=self.failure_status, headers=headers
            )
        if refused := [name for name in self.refuse_fields if name in self.requests[-1]]:
            return web.json_response(
                {
                    "error": {
                        "message": f"Unrecognized request argument supplied: {refused[0]}",
                        "type": "invalid_request_error",
                    }
                },
                status=400,
            )
        if self.mode == "404":
            return web.json_response(
                {"error": {"message": "model 'x' not found", "type": "invalid_request"}}, status=404
            )
        if self.mode == "500":
            return web.Response(text="Internal Server Error: CUDA out of memory", status=500)
        if self.mode == "stall-before-headers":
            await self.stall()
        if self.mode == "json":
            return web.json_response(
                {
                    "choices": [
                        {"message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}
                    ]
                }
            )
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
            await response.write(
                sse({"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]})
            )
        finish = "length" if self.mode == "length" else "stop"
        await response.write(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture(scope="session")
def _openai_server(golden_reply):
    server = FakeOpenAIServer(golden_reply("01"))
    yield server
    server.close()


@pytest.fixture
def openai_server(_openai_server):
    """The loopback chat-completions server, reset to streaming golden 01's reply."""
    server = _openai_server
    server.mode, server.failures_left, server.reply = "ok", 0, server.default_reply
    server.failure_status, server.retry_after = 503, None
    server.owned_by = server.version = None
    server.refuse_fields = ()
    server.requests.clear()
    server.headers.clear()
    return server


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl")).folder
