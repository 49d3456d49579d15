"""``ChatService``: the Engine's chat step on top of any backend (local model, endpoint, script).

One turn: fit the conversation into the context, stream the reply with progress (tokens, tokens/s,
the regions of every canvas call completed so far), then parse the whole reply into a Layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from omost_engine.engine import ChatMessage, ChatResult
from omost_engine.errors import CancelledError, OmostError
from omost_engine.llm.backend import Backend
from omost_engine.llm.conversation import check_prompt, fit_context
from omost_engine.llm.incremental import IncrementalCanvas
from omost_engine.llm.models import DEFAULT_LLM, LLMLoader
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken, LLMProgress, ProgressCallback
from omost_engine.reply import parse_reply

if TYPE_CHECKING:
    from omost_engine.memory import ModelManager

DEFAULT_CONTEXT_TOKENS = 8192  # what the published models handle well (phi-3's 128k is "about 8k")
DEFAULT_REPLY_RESERVE = 2048  # room kept for the reply when trimming; a typical program is ~1k tokens


class InvalidReplyError(OmostError):
    """The LLM answered, but not with a valid canvas program. The raw reply is kept."""

    def __init__(self, cause: OmostError, *, reply: str, model: str, tokens: int) -> None:
        super().__init__(
            f"the LLM's reply is not a valid canvas program: {cause.message}",
            parameter=cause.parameter,
            value=cause.value,
            allowed=cause.allowed,
            line=cause.line,
        )
        self.cause = cause
        self.reply = reply
        self.model = model
        self.tokens = tokens


def is_endpoint(llm: str) -> bool:
    return llm.startswith(("http://", "https://"))


class ChatService:
    """Implements ``Engine.chat``. ``llm`` picks the model per call: a known name, a hub id, a
    folder or an endpoint URL; None uses ``backend`` if one was given, else ``default_llm``."""

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        loader: LLMLoader | None = None,
        manager: ModelManager | None = None,
        default_llm: str = DEFAULT_LLM,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        reply_reserve_tokens: int = DEFAULT_REPLY_RESERVE,
        incremental: bool = True,
    ) -> None:
        self.backend = backend
        self.manager = manager
        self.loader = loader or LLMLoader(manager=manager)
        self.default_llm = default_llm
        self.context_tokens = context_tokens
        self.reply_reserve_tokens = reply_reserve_tokens
        self.incremental = incremental
        self._local: Backend | None = None
        self._remote: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def backend_for(self, llm: str | None) -> Backend:
        if llm is None and self.backend is not None:
            return self.backend
        name = (llm or self.default_llm).strip()
        with self._lock:
            if is_endpoint(name):
                if name not in self._remote:
                    from omost_engine.llm.openai_backend import OpenAIBackend

                    self._remote[name] = OpenAIBackend(name, context_tokens=self.context_tokens)
                return self._remote[name]
            from omost_engine.llm.transformers_backend import TransformersBackend

            loaded = self.loader.get(name)
            local = self._local
            if not isinstance(local, TransformersBackend) or local.llm is not loaded:
                local = TransformersBackend(loaded, manager=self.manager, context_tokens=self.context_tokens)
                self._local = local
            return local

    def chat(
        self,
        history: Sequence[ChatMessage],
        prompt: str,
        params: LLMParams,
        *,
        llm: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ChatResult:
        params = params.validated()
        prompt = check_prompt(prompt)
        cancel = cancel or CancelToken()
        backend = self.backend_for(llm)
        fitted = fit_context(
            history,
            prompt,
            count_tokens=backend.count_tokens,
            context_tokens=backend.context_tokens,
            reply_tokens=min(params.max_new_tokens, self.reply_reserve_tokens),
        )
        canvas = self._incremental_canvas()
        text = ""
        start = time.perf_counter()

        def on_text(piece: str, tokens: int) -> None:
            nonlocal text
            text += piece  # one copy per piece; a join over all pieces would grow with the reply
            if canvas is not None:
                canvas.feed(piece)
            if on_progress is not None:
                elapsed = time.perf_counter() - start
                on_progress(
                    LLMProgress(
                        tokens=tokens,
                        tokens_per_second=tokens / elapsed if elapsed > 0 else 0.0,
                        text=text,
                        conditions=canvas.conditions if canvas else (),
                    )
                )

        cancel.raise_if_cancelled()
        generation = backend.generate(fitted.messages, params, on_text=on_text, cancel=cancel)
        seconds = time.perf_counter() - start
        if generation.stop_reason == "cancelled":
            raise CancelledError("the LLM was stopped")
        notes = [fitted.note] if fitted.note else []
        if generation.stop_reason == "length":
            notes.append(f"the reply was cut at max_new_tokens={params.max_new_tokens}")
        notes.extend(generation.notes)
        reply = generation.text
        try:
            layout = parse_reply(reply)
        except OmostError as exc:
            raise InvalidReplyError(exc, reply=reply, model=backend.name, tokens=generation.tokens) from exc
        layout = layout.with_meta(
            llm=backend.name,
            prompt=prompt,
            llm_params={
                "seed": params.seed,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_new_tokens": params.max_new_tokens,
            },
        )
        return ChatResult(
            reply=reply,
            layout=layout,
            model=backend.name,
            tokens=generation.tokens,
            seconds=seconds,
            forward_passes=generation.forward_passes,
            trimmed_turns=fitted.trimmed_turns,
            notes=tuple(notes),
        )

    def _incremental_canvas(self) -> IncrementalCanvas | None:
        return IncrementalCanvas() if self.incremental else None

    def stream(
        self,
        history: Sequence[ChatMessage],
        prompt: str,
        params: LLMParams,
        *,
        llm: str | None = None,
        cancel: CancelToken | None = None,
    ) -> ChatStream:
        """The same turn as an async iterator of progress reports; ``.result`` holds the ChatResult."""
        return ChatStream(self, history, prompt, params, llm=llm, cancel=cancel or CancelToken())


class ChatStream:
    """``async for progress in service.stream(...)``: the chat runs in a worker thread and the
    event loop only receives its progress. Leaving the loop early cancels the generation."""

    def __init__(
        self,
        service: ChatService,
        history: Sequence[ChatMessage],
        prompt: str,
        params: LLMParams,
        *,
        llm: str | None,
        cancel: CancelToken,
    ) -> None:
        self._args = (service, list(history), prompt, params, llm)
        self.cancel = cancel
        self.result: ChatResult | None = None

    def __aiter__(self) -> AsyncIterator[LLMProgress]:
        return self._run()

    async def _run(self) -> AsyncIterator[LLMProgress]:
        service, history, prompt, params, llm = self._args
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[LLMProgress | None] = asyncio.Queue()

        def on_progress(progress: object) -> None:
            if isinstance(progress, LLMProgress):
                loop.call_soon_threadsafe(queue.put_nowait, progress)

        def run() -> ChatResult:
            try:
                return service.chat(
                    history, prompt, params, llm=llm, on_progress=on_progress, cancel=self.cancel
                )
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while (progress := await queue.get()) is not None:
                yield progress
            self.result = await task
        finally:
            if not task.done():
                self.cancel.cancel()
                with contextlib.suppress(Exception):
                    await task
