"""Variations (several seeds of one layout as one job), the 2x2 grid, and upscaling a result.

The renderer makes the images (``Renderer.render(..., count=4)``: one batched UNet call per step where
memory allows, else one image after another); this module holds the rules both engines share: which
seeds a job of ``count`` images uses, how they are laid out in a grid, and the parameters of an
upscale (the same layout and seed, the high-res pass at ``scale``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from PIL import Image

from omost_engine.errors import OmostError
from omost_engine.params import MAX_SEED, RenderParams

MAX_COUNT = 4  # a 2x2 grid
GRID_COLUMNS = 2
DEFAULT_UPSCALE = 1.5
UPSCALE_MIN = 1.05  # the pipeline's HR_MIN_SCALE: at or below it the high-res pass does not run
UPSCALE_MAX = 2.0  # RenderParams' hr_scale range
BatchStrategy = Literal["auto", "batched", "sequential"]
STRATEGIES: tuple[BatchStrategy, ...] = ("auto", "batched", "sequential")


def check_count(count: object) -> int:
    """``count`` as an int from 1 to ``MAX_COUNT``, else one clear OmostError."""
    if type(count) is not int or not 1 <= count <= MAX_COUNT:
        raise OmostError(
            f"count must be a whole number from 1 to {MAX_COUNT}, not {count!r}; allowed: 1 (one "
            f"image) or up to {MAX_COUNT} (variations in a grid)",
            parameter="count",
            value=count,
            allowed=f"1..{MAX_COUNT}",
        )
    return count


def check_strategy(strategy: object) -> BatchStrategy:
    if strategy not in STRATEGIES:
        raise OmostError(
            f"batch strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}",
            parameter="strategy",
            value=strategy,
            allowed=", ".join(STRATEGIES),
        )
    return strategy  # narrowed to BatchStrategy by the `not in STRATEGIES` test


def variation_seeds(seed: int, count: int) -> tuple[int, ...]:
    """The seeds of a ``count``-image job starting at ``seed``: seed, seed + 1, ... (wrapping at 2**32)."""
    check_count(count)
    return tuple((seed + i) % (MAX_SEED + 1) for i in range(count))


def grid_image(images: Sequence[Image.Image], columns: int = GRID_COLUMNS) -> Image.Image:
    """The images in a grid, row by row (a 2x2 grid for four); cells are the first image's size."""
    if not images:
        raise OmostError("a grid needs at least one image", parameter="images")
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (width * min(columns, len(images)), height * rows), (0, 0, 0))
    for i, image in enumerate(images):
        cell = (
            image
            if image.size == (width, height)
            else image.resize((width, height), Image.Resampling.LANCZOS)
        )
        grid.paste(cell.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    return grid


def upscale_params(params: RenderParams, scale: float = DEFAULT_UPSCALE) -> RenderParams:
    """The parameters of an upscale of a render made with ``params``: same layout, seed and size, the
    high-res pass at ``scale`` (above 1.05, at most 2: RenderParams' hr_scale range)."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not UPSCALE_MIN < scale <= UPSCALE_MAX
    ):
        raise OmostError(
            f"the upscale factor must be a number above {UPSCALE_MIN:g} and at most {UPSCALE_MAX:g}, "
            f"not {scale!r}",
            parameter="scale",
            value=scale,
            allowed=f"{UPSCALE_MIN:g}..{UPSCALE_MAX:g}",
        )
    if params.hr_scale > UPSCALE_MIN:
        raise OmostError(
            f"this image was already made with the high-res pass (hr_scale {params.hr_scale:g}); "
            "allowed: upscaling an image rendered without it",
            parameter="hr_scale",
            value=params.hr_scale,
            allowed="hr_scale 1",
        )
    return params.replace(hr_scale=float(scale))
