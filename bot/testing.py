"""The scripted engine as the bot's tests and benchmark use it: README-transcript replies by turn, small
fixed-size images, and a handshake that keeps the engine in step with the bot's event loop.

The engine itself is ``omost_engine.testing.scripted_engine.ScriptedEngine`` (the one the distributed
worker runs too); only what is specific to the bot's tests lives here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Sequence

from omost_engine.testing.scripted_engine import FakeClock
from omost_engine.testing.scripted_engine import ScriptedEngine as BaseScriptedEngine

__all__ = ["FakeClock", "ScriptedEngine"]


class ScriptedEngine(BaseScriptedEngine):
    """Turn N of a conversation gets reply N; ``llm_events`` progress events per chat (regions revealed as
    they come); images of ``image_size``. With ``loop`` set, after each progress event the engine waits until
    that loop has handled it and ``settled()`` is true (e.g. no status edit in flight), so tests see the same
    sequence of edits on every run."""

    def __init__(
        self,
        replies: Sequence[str],
        *,
        llm_events: int = 3,
        image_size: tuple[int, int] = (48, 64),
        clock: FakeClock | None = None,
        gate: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        settled: Callable[[], bool] = lambda: True,
        chat_seconds: float = 0.0,
        render_seconds: float = 0.0,
        llm_name: str = "scripted-llm",
        model_name: str = "scripted-sdxl",
        seconds_per_event: float = 1.0,
        gate_stages: Collection[str] = ("chat", "render"),
        gate_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            replies=replies,
            reply_per="turn",
            progress_chunks=llm_events - 1,
            image_size=image_size,
            clock=clock,
            gate=gate,
            chat_seconds=chat_seconds,
            render_seconds=render_seconds,
            llm_name=llm_name,
            model_name=model_name,
            seconds_per_event=seconds_per_event,
            gate_stages=gate_stages,
            gate_timeout=gate_timeout,
        )
        self.loop = loop
        self.settled = settled

    def after_progress(self) -> None:
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(_handled(self.settled), self.loop).result(timeout=10)


async def _handled(settled: Callable[[], bool]) -> None:
    """Runs after every callback queued before it, then yields until ``settled()`` (bounded)."""
    for _ in range(10_000):
        await asyncio.sleep(0)
        if settled():
            return
