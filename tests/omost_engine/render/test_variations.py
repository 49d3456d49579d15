"""Variations (several seeds as one job, batched or in sequence) and upscale, on the tiny SDXL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omost_engine.errors import CancelledError, OmostError
from omost_engine.layout import Layout
from omost_engine.params import RenderParams
from omost_engine.progress import CancelToken, RenderProgress
from omost_engine.render.renderer import Renderer
from omost_engine.reply import parse_reply
from omost_engine.testing.tiny_sdxl import TinySDXLPaths
from omost_engine.variations import grid_image, upscale_params, variation_seeds

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"
SMALL = RenderParams(width=256, height=256, steps=2, seed=41)


@pytest.fixture(scope="module")
def renderer(tiny_sdxl: TinySDXLPaths) -> Renderer:
    return Renderer(default_model=str(tiny_sdxl.folder), device="cpu")


@pytest.fixture(scope="module")
def layout() -> Layout:
    reply = json.loads((GOLDENS / "09_same_distance_ties.json").read_text(encoding="utf-8"))["bot_response"]
    return parse_reply(reply)


def _close(a: Image.Image, b: Image.Image) -> None:
    """Equal up to float rounding of batched kernels: no pixel off by more than 1, almost none off at all."""
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    assert a.size == b.size
    assert diff.max() <= 1 and diff.mean() < 1e-3


@pytest.mark.parametrize("method", ["omost", "area"])
def test_batched_image_i_is_the_single_render_of_seed_i(
    renderer: Renderer, layout: Layout, method: str
) -> None:
    params = SMALL.replace(method=method, steps=2 if method == "omost" else 1)
    seen: list[RenderProgress] = []
    batch = renderer.render(layout, params, count=4, strategy="batched", on_progress=seen.append)
    assert batch.batched and batch.seeds == (41, 42, 43, 44) and batch.count == 4
    # One sampling run for all four: progress counts its steps once, for four images.
    assert [(p.steps_done, p.steps_in_all, p.images) for p in seen] == [
        (s, params.steps, 4) for s in range(1, params.steps + 1)
    ]
    singles = [renderer.render(layout, params.replace(seed=seed)).image for seed in batch.seeds]
    for batched, single in zip(batch.images, singles, strict=True):
        _close(batched, single)
    assert len({np.asarray(image).tobytes() for image in batch.images}) == 4  # four different pictures
    # The grid is 2x2 with the images in order.
    assert batch.image.size == (512, 512)
    assert np.array_equal(np.asarray(batch.image.crop((256, 256, 512, 512))), np.asarray(batch.images[3]))
    assert np.array_equal(np.asarray(batch.image.crop((256, 0, 512, 256))), np.asarray(batch.images[1]))
    picked = batch.pick(2)
    assert picked.image is batch.images[2] and picked.params.seed == 43 and picked.seeds == (43,)
    assert picked.params.replace(seed=41) == params


def test_sequential_renders_each_seed_alone_with_progress_over_the_job(
    renderer: Renderer, layout: Layout
) -> None:
    seen: list[RenderProgress] = []
    result = renderer.render(layout, SMALL, count=2, strategy="sequential", on_progress=seen.append)
    assert not result.batched and result.seeds == (41, 42)
    for image, seed in zip(result.images, result.seeds, strict=True):
        assert np.array_equal(
            np.asarray(image), np.asarray(renderer.render(layout, SMALL.replace(seed=seed)).image)
        )
    assert [(p.step, p.steps_done, p.steps_in_all) for p in seen] == [
        (1, 1, 4),
        (2, 2, 4),
        (1, 3, 4),
        (2, 4, 4),
    ]
    assert seen[1].seconds_left(10.0) == pytest.approx(10.0)
    assert result.image.size == (512, 256)  # two images side by side


def test_auto_batches_on_the_cpu_and_falls_back_to_sequence_when_memory_runs_out(
    renderer: Renderer, layout: Layout, monkeypatch
) -> None:
    params = SMALL.replace(steps=1)
    assert renderer.render(layout, params, count=2).batched
    pipeline = renderer.pipeline()
    real = pipeline.render_batch

    def out_of_memory_when_batched(conditions, params, seeds, **kwargs):
        if len(seeds) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(conditions, params, seeds, **kwargs)

    monkeypatch.setattr(pipeline, "render_batch", out_of_memory_when_batched)
    fallback = renderer.render(layout, params, count=2)
    assert not fallback.batched and fallback.count == 2
    with pytest.raises(torch.cuda.OutOfMemoryError):
        renderer.render(layout, params, count=2, strategy="batched")


def test_cancel_stops_the_whole_batch(renderer: Renderer, layout: Layout) -> None:
    for strategy in ("batched", "sequential"):
        token = CancelToken()
        steps: list[int] = []

        def on_progress(
            progress: RenderProgress, steps: list[int] = steps, token: CancelToken = token
        ) -> None:
            steps.append(progress.steps_done)
            token.cancel()

        with pytest.raises(CancelledError):
            renderer.render(layout, SMALL, count=4, strategy=strategy, on_progress=on_progress, cancel=token)
        assert steps == [1]


def test_upscale_of_a_result_equals_the_render_with_the_high_res_pass(
    renderer: Renderer, layout: Layout
) -> None:
    first = renderer.render(layout, SMALL.replace(hr_steps=2))
    params = upscale_params(first.params)
    assert params.hr_scale == 1.5 and params.seed == first.params.seed and params.width == 256
    seen: list[RenderProgress] = []
    upscaled = renderer.render(layout, params, base=first.image, on_progress=seen.append)
    assert upscaled.image.size == (384, 384)
    assert [p.stage for p in seen] == ["hires"] * params.hr_steps  # the base pass is not run again
    full = renderer.render(layout, params)
    assert np.array_equal(np.asarray(upscaled.image), np.asarray(full.image))
    assert renderer.render(layout, upscale_params(first.params, 2.0), base=first.image).image.size == (
        512,
        512,
    )


def test_bad_counts_scales_and_upscale_input_are_clear_errors(renderer: Renderer, layout: Layout) -> None:
    for count in (0, 5, 2.0, True):
        with pytest.raises(OmostError, match="count must be a whole number from 1 to 4"):
            renderer.render(layout, SMALL, count=count)
    with pytest.raises(OmostError, match="batch strategy"):
        renderer.render(layout, SMALL, count=2, strategy="parallel")
    for scale in (1.0, 2.5, float("nan"), "2"):
        with pytest.raises(OmostError, match="upscale factor"):
            upscale_params(SMALL, scale)
    with pytest.raises(OmostError, match="already made with the high-res pass"):
        upscale_params(SMALL.replace(hr_scale=1.5))
    image = Image.new("RGB", (256, 256))
    with pytest.raises(OmostError, match="needs hr_scale above"):
        renderer.render(layout, SMALL, base=image)
    with pytest.raises(OmostError, match="must be 1 of 256x256"):
        renderer.render(layout, upscale_params(SMALL), base=Image.new("RGB", (128, 128)))
    with pytest.raises(OmostError, match="upscale is of one image"):
        renderer.render(layout, upscale_params(SMALL), base=image, count=4)
    with pytest.raises(OmostError, match="no image 4"):
        renderer.render(layout, SMALL.replace(steps=1)).pick(4)


def test_seeds_and_grid_helpers() -> None:
    assert variation_seeds(7, 4) == (7, 8, 9, 10)
    assert variation_seeds(2**32 - 2, 4) == (2**32 - 2, 2**32 - 1, 0, 1)
    assert variation_seeds(5, 1) == (5,)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    grid = grid_image([Image.new("RGB", (4, 3), c) for c in colours])
    assert grid.size == (8, 6)
    assert [grid.getpixel(xy) for xy in ((0, 0), (4, 0), (0, 3), (7, 5))] == colours
    three = grid_image([Image.new("RGB", (4, 3), c) for c in colours[:3]])
    assert three.size == (8, 6) and three.getpixel((7, 5)) == (0, 0, 0)
