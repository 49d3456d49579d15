"""Progress reports and cancellation shared by the LLM step and the renderer.

Engine work runs in a worker thread; the bot watches it from the event loop. Callbacks are
called from the worker thread and must be cheap and thread-safe (the bot hops back to its
loop with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from omost_engine.errors import CancelledError

if TYPE_CHECKING:
    from PIL.Image import Image

    from omost_engine.conditions import Condition


class CancelToken:
    """A thread-safe flag: set by whoever wants the work stopped, checked by the work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled")

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True when cancelled meanwhile."""
        return self._event.wait(timeout)


@dataclass(frozen=True, kw_only=True)
class LLMProgress:
    """The LLM has produced ``tokens`` new tokens so far."""

    tokens: int
    tokens_per_second: float
    text: str
    # Conditions interpreted from the canvas calls completed so far (global first); empty until
    # the first call completes.
    conditions: tuple[Condition, ...] = field(default_factory=tuple)


@dataclass(frozen=True, kw_only=True)
class RenderProgress:
    """Diffusion step ``step`` of ``total`` of this pass (``stage``) is done (1-based).

    ``run_step`` of ``run_total`` counts the whole render: the base pass's steps, then the high-res
    pass's, so the time left is not computed from one pass alone (None: this pass is the whole render).
    ``preview`` is set only where the renderer was asked for previews.
    """

    step: int
    total: int
    stage: str = "render"  # "render" or "hires"
    preview: Image | None = None
    run_step: int | None = None
    run_total: int | None = None
    # Images this render makes (variations): a batched step advances all of them; rendered one after
    # another, run_step/run_total count every image's steps.
    images: int = 1

    @property
    def steps_done(self) -> int:
        """Steps done in the whole render."""
        return self.step if self.run_step is None else self.run_step

    @property
    def steps_in_all(self) -> int:
        """Steps of the whole render (base and high-res passes)."""
        return self.total if self.run_total is None else self.run_total

    def seconds_left(self, elapsed: float) -> float | None:
        """The time left, at the pace of the ``elapsed`` seconds so far over every step of the render;
        None before the first step."""
        done = self.steps_done
        if done <= 0:
            return None
        return elapsed / done * max(self.steps_in_all - done, 0)


ProgressCallback = Callable[[LLMProgress | RenderProgress], None]
