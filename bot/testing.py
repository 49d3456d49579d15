"""A scripted ``Engine`` for the bot's tests and benchmark: real layouts, small real images, no models.

Replies come from a script (e.g. the README transcript goldens); turn N of a conversation gets reply N,
so a refinement gets the edited program. It reports progress like the real engine, honours the
``CancelToken``, can be told to fail a stage or to block until released, and can drive a ``FakeClock``
(each progress event moves it on) so throttling and ETAs are testable without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from omost_engine.engine import ChatMessage, ChatResult, RenderResult
from omost_engine.layout import Layout
from omost_engine.params import LLMParams, RenderParams
from omost_engine.preview import masks_image
from omost_engine.progress import CancelToken, LLMProgress, ProgressCallback, RenderProgress
from omost_engine.reply import parse_reply


class FakeClock:
    """A monotonic clock that moves only when told; thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class ScriptedEngine:
    replies: Sequence[str]
    llm_events: int = 3  # LLMProgress events per chat (regions revealed one call at a time)
    image_size: tuple[int, int] = (48, 64)
    clock: FakeClock | None = None
    seconds_per_event: float = 1.0  # how far each progress event moves ``clock``
    # Wait after each event until this loop has handled it and ``settled()`` is true (e.g. no status edit in
    # flight), so tests see the same sequence of edits on every run.
    loop: asyncio.AbstractEventLoop | None = None
    settled: Callable[[], bool] = lambda: True
    llm_name: str = "scripted-llm"
    sdxl_name: str = "scripted-sdxl"
    failures: deque[tuple[str, Exception]] = field(default_factory=deque)  # (stage, error) for coming calls
    gate: threading.Event | None = None  # when set up and not yet set, stages wait here (or for a cancel)
    entered: threading.Event = field(default_factory=threading.Event)  # set when a stage starts
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (stage, prompt or first prefix, seed)
    histories: list[list[ChatMessage]] = field(default_factory=list)
    llm_params: list[LLMParams] = field(default_factory=list)  # what each chat call was given

    def fail_next(self, stage: str, error: Exception) -> None:
        self.failures.append((stage, error))

    def _begin(self, stage: str, cancel: CancelToken | None) -> None:
        self.entered.set()
        if self.failures and self.failures[0][0] == stage:
            raise self.failures.popleft()[1]
        while self.gate is not None and not self.gate.is_set():
            if cancel is not None and cancel.wait(0.005):
                break
            self.gate.wait(0.005)
        if cancel is not None:
            cancel.raise_if_cancelled()

    def _tick(self) -> None:
        if self.clock is not None:
            self.clock.advance(self.seconds_per_event)

    def _pause(self) -> None:
        if self.loop is not None:
            asyncio.run_coroutine_threadsafe(_handled(self.settled), self.loop).result(timeout=10)

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
        self.calls.append(("chat", prompt, params.seed))
        self.histories.append(list(history))
        self.llm_params.append(params)
        self._begin("chat", cancel)
        reply = self.replies[min(len(history) // 2, len(self.replies) - 1)]
        layout = parse_reply(reply)
        for event in range(1, self.llm_events + 1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            self._tick()
            shown = max(1, len(layout.conditions) * event // self.llm_events)
            if on_progress is not None:
                on_progress(
                    LLMProgress(
                        tokens=40 * event,
                        tokens_per_second=40.0,
                        text=reply[: 100 * event],
                        conditions=tuple(layout.conditions[:shown]),
                    )
                )
                self._pause()
        return ChatResult(
            reply=reply, layout=layout, model=llm or self.llm_name, tokens=40 * self.llm_events, seconds=0.01
        )

    def render(
        self,
        layout: Layout,
        params: RenderParams,
        *,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> RenderResult:
        self.calls.append(
            ("render", layout.conditions[0].prefixes[0] if layout.conditions[0].prefixes else "", params.seed)
        )
        self._begin("render", cancel)
        for step in range(1, params.steps + 1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            self._tick()
            if on_progress is not None:
                on_progress(RenderProgress(step=step, total=params.steps))
                self._pause()
        # The colour sketch plus seeded noise: a real picture that differs from seed to seed.
        width, height = self.image_size
        sketch = np.asarray(Image.fromarray(layout.sketch()).resize((width, height)), dtype=np.int16)
        noise = np.random.default_rng(params.seed).integers(-20, 21, size=sketch.shape)
        image = Image.fromarray(np.clip(sketch + noise, 0, 255).astype(np.uint8))
        return RenderResult(
            image=image,
            masks=masks_image(layout, (180, 180)),
            model=model or self.sdxl_name,
            seconds=0.01,
            params=params,
        )


async def _handled(settled: Callable[[], bool]) -> None:
    """Runs after every callback queued before it, then yields until ``settled()`` (bounded)."""
    for _ in range(10_000):
        await asyncio.sleep(0)
        if settled():
            return
