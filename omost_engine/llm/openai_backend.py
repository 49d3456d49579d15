"""An OpenAI-compatible chat-completions endpoint as a Backend (vLLM, llama.cpp's server, Ollama, TGI).

The reply streams as server-sent events. The request runs on a private event loop in the calling
(worker) thread with aiohttp, which gives separate connect and read (stall) timeouts and lets a
cancel abort a read that is waiting on the network.

With ``LLMParams.grammar`` on, the canvas grammar (GBNF, lengths bounded inside it) goes with the
request in the field the server takes: llama.cpp's ``grammar``, vLLM's ``structured_outputs.grammar``
(vLLM 0.12 and later) or ``guided_grammar`` (earlier vLLM). ``grammar_field="auto"`` asks the server
what it is (``/v1/models`` ``owned_by``, then vLLM's ``/version``) and sends both the llama.cpp and
the current vLLM field to a server it does not recognise (vLLM, llama.cpp, Ollama and TGI ignore
fields they do not know). A server that refuses the request because of the field (HTTP 400/422
naming it, or the grammar) gets the request again without it, once; the backend remembers that,
and every reply it was not able to constrain carries a note.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from omost_engine.errors import OmostError
from omost_engine.llm.backend import Backend, Generation, Message, OnText, StopReason
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

if TYPE_CHECKING:
    from omost_engine.llm.decoding.grammar import GrammarLimits

logger = logging.getLogger(__name__)

# Rate limited, a passing server error, a proxy or a server still loading its model.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_DELAY = 30.0  # seconds: no single wait is longer, and a longer Retry-After is not waited for
CANCEL_POLL_SECONDS = 0.05

GrammarField = Literal["auto", "llama.cpp", "vllm", "vllm-guided", "none"]
GRAMMAR_FIELDS: tuple[str, ...] = ("auto", "llama.cpp", "vllm", "vllm-guided", "none")
# The request fields that carry a grammar, per server kind ("unknown": both current ones; servers
# that do not know a field ignore it, and the strict ones are handled by the fallback).
_GRAMMAR_REQUEST_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "llama.cpp": ("grammar",),
        "vllm": ("structured_outputs",),
        "vllm-guided": ("guided_grammar",),
        "unknown": ("grammar", "structured_outputs"),
        "none": (),
    }
)
# ``/v1/models`` ``owned_by`` of the servers whose grammar field is known.
_OWNERS: Mapping[str, str] = MappingProxyType({"llamacpp": "llama.cpp", "vllm": "vllm"})
VLLM_STRUCTURED_OUTPUTS_SINCE = (0, 12)  # guided_grammar was removed in vLLM 0.12
REFUSAL_STATUSES = frozenset({400, 422})


def grammar_request_fields(kind: str, grammar: str) -> dict[str, Any]:
    """The JSON fields that pass ``grammar`` to a server of ``kind`` (see ``_GRAMMAR_REQUEST_FIELDS``)."""
    values = {"grammar": grammar, "structured_outputs": {"grammar": grammar}, "guided_grammar": grammar}
    return {name: values[name] for name in _GRAMMAR_REQUEST_FIELDS[kind]}


def _version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"\s*v?(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


class _GrammarRefused(Exception):
    """The server answered 400/422 about the grammar field: ask again without it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``…/v1`` and ``…/v1/chat/completions`` all name the same endpoint."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OmostError(
            f"the LLM endpoint must be an http(s) URL, not {base_url!r}",
            parameter="llm_endpoint",
            value=base_url,
            allowed="http://host:port or http://host:port/v1",
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if re.search(r"/v\d+$", path) else "/v1/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds; None when absent or not a number (HTTP dates are not used:
    the servers this talks to send seconds)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _server_message(body: bytes) -> str:
    """The human part of an error body: OpenAI's ``error.message``, other servers' ``detail``, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            for key in ("message", "detail", "error"):
                message = error.get(key)
                if isinstance(message, str):
                    return message[:300]
        if isinstance(error, str):
            return error[:300]
    return text[:300]


@dataclass
class _Reply:
    parts: list[str] = field(default_factory=list)
    chunks: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None
    notes: list[str] = field(default_factory=list)


class OpenAIBackend(Backend):
    """Streams ``/v1/chat/completions``; retries connection failures and HTTP 429/500/502/503/504
    before the reply starts.

    ``retries`` more attempts at most, each after a jittered exponential backoff
    (``retry_delay · 2^attempt`` times a random factor in [0.5, 1.5)), or after the server's
    ``Retry-After`` seconds when it sends them; no wait is longer than ``max_retry_delay``, and a
    server that asks for more is reported at once. ``sleep`` and ``jitter`` are injectable so tests
    need not wait.

    ``model`` None asks the server's ``/models`` for its first model (servers that host one model,
    like llama.cpp's, accept any name anyway). ``grammar_field`` says where the canvas grammar goes
    when ``LLMParams.grammar`` is on (module docstring); "none" never sends it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        retries: int = 2,
        retry_delay: float = 0.5,
        max_retry_delay: float = MAX_RETRY_DELAY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] | None = None,
        context_tokens: int = 8192,
        chars_per_token: float = 3.5,
        grammar_field: GrammarField = "auto",
        grammar_limits: GrammarLimits | None = None,
    ) -> None:
        if grammar_field not in GRAMMAR_FIELDS:
            raise OmostError(
                f"unknown grammar field kind {grammar_field!r}",
                parameter="grammar_field",
                value=grammar_field,
                allowed=GRAMMAR_FIELDS,
            )
        self.url = chat_completions_url(base_url)
        self.models_url = self.url.removesuffix("/chat/completions") + "/models"
        self.model = model
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._sleep = sleep
        self._jitter = jitter if jitter is not None else lambda: random.uniform(0.5, 1.5)
        self.context_tokens = context_tokens
        self.chars_per_token = chars_per_token
        self.grammar_field = grammar_field
        self.grammar_limits = grammar_limits
        self.server_kind: str | None = (
            None if grammar_field == "auto" else grammar_field
        )  # auto: after the probe
        self.grammar_refusal: str | None = None  # the server's answer once it refused the grammar field
        self._grammar_text: str | None = None

    @property
    def name(self) -> str:  # type: ignore[override]  # Backend declares a plain attribute; here it is derived, read-only
        return f"{self.model or 'default model'} at {self.url.removesuffix('/chat/completions')}"

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """An estimate: remote servers do not share their tokenizer."""
        return sum(math.ceil(len(m["content"]) / self.chars_per_token) + 5 for m in messages)

    def generate(
        self,
        messages: Sequence[Message],
        params: LLMParams,
        *,
        on_text: OnText | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(
                self._generate(list(messages), params.validated(), on_text, cancel or CancelToken())
            )
        raise RuntimeError("OpenAIBackend.generate blocks: call it from a worker thread (or use astream)")

    async def _generate(
        self, messages: list[Message], params: LLMParams, on_text: OnText | None, cancel: CancelToken
    ) -> Generation:
        reply = _Reply()
        work = asyncio.ensure_future(self._request(messages, params, on_text, reply))
        while not work.done():
            await asyncio.wait({work}, timeout=CANCEL_POLL_SECONDS)
            if cancel.cancelled and not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return Generation(
                    text="".join(reply.parts),
                    tokens=reply.chunks,
                    stop_reason="cancelled",
                    forward_passes=reply.chunks,
                )
        work.result()  # raises the request's OmostError, if any
        tokens = reply.usage_tokens if reply.usage_tokens is not None else reply.chunks
        stop: StopReason = "length" if reply.finish_reason == "length" else "end"
        if cancel.cancelled:
            stop = "cancelled"
        return Generation(
            text="".join(reply.parts),
            tokens=tokens,
            stop_reason=stop,
            forward_passes=reply.chunks,
            notes=tuple(reply.notes),
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _stalled(self) -> OmostError:
        return OmostError(
            f"the LLM endpoint {self._where()} stopped sending for {self.read_timeout:g} s",
            parameter="llm_endpoint",
            value=self.url,
            allowed="a server that keeps streaming",
        )

    def _where(self) -> str:
        return self.url.removesuffix("/chat/completions")

    def grammar_text(self) -> str:
        """The canvas grammar as GBNF with string and comment lengths inside it (no guard runs on a
        server); built once per backend."""
        if self._grammar_text is None:
            from omost_engine.llm.decoding.grammar import CanvasNames, canvas_grammar_ebnf

            self._grammar_text = canvas_grammar_ebnf(
                CanvasNames.from_tables(), self.grammar_limits, bounded_text=True
            )
        return self._grammar_text

    async def _grammar_fields(
        self, session: aiohttp.ClientSession, params: LLMParams, reply: _Reply
    ) -> dict[str, Any]:
        if not params.grammar or self.grammar_field == "none":
            return {}
        if self.grammar_refusal is not None:
            reply.notes.append(
                f"the LLM endpoint refused the canvas grammar earlier ({self.grammar_refusal}), "
                "so this reply was not constrained by it"
            )
            return {}
        if self.server_kind is None:
            self.server_kind = await self._detect_kind(session)
        return grammar_request_fields(self.server_kind, self.grammar_text())

    async def _request(
        self, messages: list[Message], params: LLMParams, on_text: OnText | None, reply: _Reply
    ) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
        )
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers()) as session:
            if self.model is None:
                self.model = await self._first_model(session)
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "stream": True,
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "seed": params.seed,
            }
            grammar_fields = await self._grammar_fields(session, params, reply)
            try:
                response = await self._post(session, body | grammar_fields, refusable=tuple(grammar_fields))
            except _GrammarRefused as refused:
                self.grammar_refusal = str(refused)
                logger.warning(
                    "%s refused the canvas grammar (%s); asking again without it, from now on",
                    self._where(),
                    refused,
                )
                reply.notes.append(
                    f"the LLM endpoint refused the canvas grammar ({refused}), "
                    "so this reply was not constrained by it"
                )
                response = await self._post(session, body)
            async with response:
                try:
                    await self._read(response, on_text, reply)
                except TimeoutError as exc:
                    raise self._stalled() from exc
                except aiohttp.ClientError as exc:
                    raise OmostError(
                        f"the connection to the LLM endpoint {self._where()} broke: {exc}",
                        parameter="llm_endpoint",
                        value=self.url,
                    ) from exc

    def _backoff(self, attempt: int) -> float:
        delay: float = (
            self.retry_delay * 2**attempt * self._jitter()
        )  # int ** int is typed Any (may be a float)
        return min(delay, self.max_retry_delay)

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any], refusable: tuple[str, ...] = ()
    ) -> aiohttp.ClientResponse:
        """POST with retries; ``refusable`` names the grammar fields whose refusal raises _GrammarRefused."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            delay = self._backoff(attempt)
            try:
                response = await session.post(self.url, json=body)
            except aiohttp.SocketTimeoutError as exc:  # connected, but no answer: a stall, not retried
                raise self._stalled() from exc
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if last:
                    raise OmostError(
                        f"cannot reach the LLM endpoint {self._where()} after {attempt + 1} tries: {exc}",
                        parameter="llm_endpoint",
                        value=self.url,
                        allowed="a running OpenAI-compatible server",
                    ) from exc
            else:
                if response.status == 200:
                    return response
                message = _server_message(await response.read())
                asked = retry_after_seconds(response.headers.get("Retry-After"))
                response.release()
                if (
                    refusable
                    and response.status in REFUSAL_STATUSES
                    and any(name in message.lower() for name in (*refusable, "grammar"))
                ):
                    raise _GrammarRefused(response.status, message)
                retryable = response.status in RETRY_STATUSES
                if retryable and asked is not None and asked > self.max_retry_delay and not last:
                    raise OmostError(
                        f"the LLM endpoint {self._where()} answered HTTP {response.status} and asks to retry after "
                        f"{asked:g} s (longer than the {self.max_retry_delay:g} s this waits): {message}",
                        parameter="llm_endpoint",
                        value=response.status,
                        allowed="HTTP 200",
                    )
                if last or not retryable:
                    tries = f" after {attempt + 1} tries" if retryable and attempt else ""
                    raise OmostError(
                        f"the LLM endpoint {self._where()} answered HTTP {response.status}{tries}: {message}",
                        parameter="llm_endpoint",
                        value=response.status,
                        allowed="HTTP 200",
                    )
                if asked is not None:
                    delay = asked
                logger.info(
                    "%s answered HTTP %d; trying again in %.2f s", self._where(), response.status, delay
                )
            await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        """A GET's JSON body, or None for anything else (the chat request reports an unreachable server)."""
        try:
            async with session.get(url) as response:
                return await response.json(content_type=None) if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def _first_listed_model(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        data = await self._get_json(session, self.models_url)
        models = data.get("data") if isinstance(data, dict) else None
        return models[0] if models and isinstance(models[0], dict) else {}

    async def _first_model(self, session: aiohttp.ClientSession) -> str:
        model_id = (await self._first_listed_model(session)).get("id")
        return model_id if isinstance(model_id, str) else "omost"

    async def _detect_kind(self, session: aiohttp.ClientSession) -> str:
        """llama.cpp or vLLM from ``owned_by``; for vLLM, which field its version takes."""
        kind = _OWNERS.get(str((await self._first_listed_model(session)).get("owned_by")), "unknown")
        if kind == "vllm":
            root = re.sub(r"/v\d+$", "", self._where())
            data = await self._get_json(session, root + "/version")
            version = _version(str(data.get("version", ""))) if isinstance(data, dict) else None
            if version is not None and version < VLLM_STRUCTURED_OUTPUTS_SINCE:
                kind = "vllm-guided"
        logger.info("%s: sending the canvas grammar as a %s server takes it", self._where(), kind)
        return kind

    async def _read(self, response: aiohttp.ClientResponse, on_text: OnText | None, reply: _Reply) -> None:
        if response.content_type == "application/json":  # a server that ignored "stream": one body
            self._take(json.loads(await response.read()), on_text, reply, streamed=False)
            return
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank lines, ": keep-alive" comments, "event:" fields
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise OmostError(
                    f"the LLM endpoint {self._where()} sent an event that is not JSON: {data[:100]}",
                    parameter="llm_endpoint",
                    value=self.url,
                ) from exc
            self._take(event, on_text, reply, streamed=True)

    def _take(self, event: Any, on_text: OnText | None, reply: _Reply, *, streamed: bool) -> None:
        if not isinstance(event, dict):
            return
        if "error" in event:
            raise OmostError(
                f"the LLM endpoint {self._where()} reported an error: "
                f"{_server_message(json.dumps(event).encode())}",
                parameter="llm_endpoint",
                value=self.url,
            )
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            reply.usage_tokens = usage["completion_tokens"]
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            message = choice.get("delta" if streamed else "message") or {}
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and content:
                reply.parts.append(content)
                reply.chunks += 1
                if on_text is not None:
                    on_text(content, reply.usage_tokens or reply.chunks)
            if choice.get("finish_reason"):
                reply.finish_reason = choice["finish_reason"]
