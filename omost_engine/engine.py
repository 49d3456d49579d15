"""The engine's interface: what the bot's worker, the CLI and the distributed worker call.

``Engine`` is a Protocol so that the bot's tests can put a scripted engine (real layouts, small
real images, no GPU-sized models) behind the same interface as the real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    """A render. With ``count`` > 1 (variations) ``image`` is the grid (``variations.grid_image``),
    ``images`` the images in grid order and ``seeds`` their seeds; ``params`` are the first image's.
    With one image, ``images`` is ``(image,)`` and ``seeds`` ``(params.seed,)``."""

    image: Image
    masks: Image  # labelled picture of the region boxes
    model: str
    seconds: float
    params: RenderParams
    images: tuple[Image, ...] = ()
    seeds: tuple[int, ...] = ()
    batched: bool = False  # the images were sampled together (one UNet call per step for all of them)

    def __post_init__(self) -> None:
        if not self.images:
            object.__setattr__(self, "images", (self.image,))
        if not self.seeds:
            object.__setattr__(self, "seeds", (self.params.seed,))

    @property
    def count(self) -> int:
        return len(self.images)

    def pick(self, index: int) -> RenderResult:
        """Image ``index`` (0-based, grid order) as a result of its own: its seed in ``params``, no
        render needed."""
        if type(index) is not int or not 0 <= index < len(self.images):
            from omost_engine.errors import OmostError

            raise OmostError(
                f"there is no image {index!r} in this result; allowed: 0 to {len(self.images) - 1}",
                parameter="index",
                value=index,
                allowed=f"0..{len(self.images) - 1}",
            )
        seed = self.seeds[index]
        return replace(
            self,
            image=self.images[index],
            images=(self.images[index],),
            seeds=(seed,),
            params=self.params.replace(seed=seed),
            batched=False,
        )


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
        count: int = 1,
        base: Image | None = None,
    ) -> RenderResult:
        """``count`` images (1..4: seeds ``variations.variation_seeds(params.seed, count)``, a grid when
        more than one). ``base``: the image this layout and seed already made without the high-res pass
        (an upscale, ``params = variations.upscale_params(...)``), so only the high-res pass runs."""
        ...
