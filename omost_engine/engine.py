"""The engine's interface: what the bot's worker, the CLI and the distributed worker call.

``Engine`` is a Protocol so that the bot's tests can put a scripted engine (real layouts, small
real images, no GPU-sized models) behind the same interface as the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from PIL.Image import Image

    from omost_engine.layout import Layout


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, kw_only=True)
class ChatResult:
    reply: str  # the raw reply, kept even when it holds no valid program
    layout: Layout
    model: str
    tokens: int
    seconds: float
    forward_passes: int = 0
    # Turns dropped from the front of the history to fit the context, oldest first.
    trimmed_turns: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, kw_only=True)
class RenderResult:
    image: Image
    masks: Image  # labelled picture of the region boxes
    model: str
    seconds: float
    params: RenderParams


class Engine(Protocol):
    """One LLM turn and one regional render; blocking, meant to run in a worker thread."""

    def chat(
        self,
        history: Sequence[ChatMessage],
        prompt: str,
        params: LLMParams,
        *,
        llm: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ChatResult: ...

    def render(
        self,
        layout: Layout,
        params: RenderParams,
        *,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> RenderResult: ...
