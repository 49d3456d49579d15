"""What every LLM backend offers: a blocking generate with a per-piece callback, and an async stream.

Backends are blocking at heart (the bot runs them in a worker thread). ``astream`` bridges any of
them to an async iterator by running ``generate`` in a thread and handing pieces to the event
loop with ``call_soon_threadsafe``, so the loop never waits on the model.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


# Called from the generating thread with (new text, tokens generated so far).
OnText = Callable[[str, int], None]
StopReason = Literal["end", "length", "cancelled"]


@dataclass(frozen=True, kw_only=True)
class Generation:
    """How a generation ended: the text, its token count and why it stopped."""

    text: str
    tokens: int
    stop_reason: StopReason
    forward_passes: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose state was reused from the previous turn
    notes: tuple[str, ...] = ()  # things the user should know about this reply (e.g. not constrained)


class Backend(ABC):
    """One LLM: a local transformers model, a remote OpenAI-compatible server, or a script."""

    name: str
    context_tokens: int

    @abstractmethod
    def generate(
        self,
        messages: Sequence[Message],
        params: LLMParams,
        *,
        on_text: OnText | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation:
        """Generate one assistant reply, calling ``on_text`` for each new piece; blocking.

        Stops early (stop_reason "cancelled") within a token or two of ``cancel`` being set.
        """

    @abstractmethod
    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt length in tokens (exact for local models, an estimate for remote ones)."""

    def prepare(self) -> None:
        """Make the model ready to generate (e.g. bring it back onto the GPU); cheap when it is."""
        return None  # remote and scripted backends are always ready

    async def astream(
        self, messages: Sequence[Message], params: LLMParams, *, cancel: CancelToken | None = None
    ) -> AsyncIterator[str]:
        """The reply's pieces as an async iterator; generation runs in a worker thread.

        Leaving the loop early (break, or the consumer being cancelled) cancels the generation.
        """
        cancel = cancel or CancelToken()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_text(piece: str, tokens: int) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def run() -> Generation:
            try:
                return self.generate(messages, params, on_text=on_text, cancel=cancel)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        task = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            while (piece := await queue.get()) is not None:
                yield piece
            await task  # re-raises the generation's error, if any
        finally:
            if not task.done():
                cancel.cancel()
                with contextlib.suppress(Exception):
                    await task
