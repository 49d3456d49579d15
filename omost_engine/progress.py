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
    """Diffusion step ``step`` of ``total`` is done (1-based)."""

    step: int
    total: int
    stage: str = "render"  # "render" or "hires"
    preview: Image | None = None


ProgressCallback = Callable[[LLMProgress | RenderProgress], None]
