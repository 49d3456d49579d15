"""Status texts, the layout preview and fitting images under Discord's upload limit."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bot.formatting import (
    HELP_TEXT,
    encode_image,
    format_seconds,
    llm_text,
    preview_image,
    progress_bar,
    render_text,
)
from bot.views import BUTTONS, RESULT_ACTIONS
from omost_engine.conditions import Condition
from omost_engine.progress import LLMProgress, RenderProgress


def noisy(size: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_progress_bar_and_times() -> None:
    assert progress_bar(0.5, width=10) == "█████░░░░░"
    assert progress_bar(2.0, width=4) == "████" and progress_bar(-1, width=4) == "░░░░"
    assert format_seconds(5.4) == "5s" and format_seconds(125) == "2m 05s"


def test_status_texts() -> None:
    global_condition = Condition((0, 90, 0, 90), ("sky",), (), (10, 20, 30))
    region = Condition((0, 45, 0, 45), ("bird",), (), (200, 0, 0))
    text = llm_text(
        3, LLMProgress(tokens=120, tokens_per_second=30.0, text="", conditions=(global_condition, region))
    )
    assert "120 tokens (30.0/s), 1 region so far" in text
    text = render_text(3, RenderProgress(step=5, total=20), eta=42)
    assert "step 5/20" in text and "about 42s left" in text and "█████░" in text


def test_preview_image_draws_the_regions() -> None:
    conditions = (
        Condition((0, 90, 0, 90), ("sky",), (), (10, 20, 30)),
        Condition((0, 45, 0, 45), ("bird",), (), (200, 0, 0)),
    )
    image = preview_image(conditions, size=90)
    assert image.size == (90, 90)
    assert image.getpixel((80, 80)) != image.getpixel((20, 20))  # the region differs from the background


@pytest.mark.parametrize("limit", [10_000_000, 150_000, 20_000])
def test_encode_image_fits_the_limit(limit: int) -> None:
    image = noisy(256)  # about 197 kB as PNG
    encoded = encode_image(image, limit=limit)
    assert len(encoded.data) <= limit
    decoded = Image.open(io.BytesIO(encoded.data))
    if limit >= 10_000_000:
        assert encoded.filename == "image.png" and encoded.note is None and decoded.size == (256, 256)
    elif limit == 150_000:
        assert (
            encoded.filename == "image.jpg" and "JPEG" in (encoded.note or "") and decoded.size == (256, 256)
        )
    else:
        assert (
            encoded.filename == "image.jpg" and "downscaled" in (encoded.note or "") and decoded.size[0] < 256
        )


def test_the_time_left_in_the_high_res_pass_counts_every_step_of_the_render() -> None:

    from bot.presenter import StatusPresenter, Tracker

    now = {"t": 100.0}
    presenter = StatusPresenter(clock=lambda: now["t"])
    tracker = Tracker(
        job_id=4, user_id=1, channel_id=2, guild_id=None, turn_id=3, phase="render", render_started=100.0
    )
    # 20 base steps done in 40 s, then 1 of 10 high-res steps in 2 s more: 21 of 30 steps in 42 s.
    tracker.render_progress = RenderProgress(step=1, total=10, stage="hires", run_step=21, run_total=30)
    now["t"] = 142.0
    text, _ = presenter.phase_status(tracker)
    assert "high-res pass step 1/10" in text
    assert "about 18s left" in text  # 9 steps at 2 s each; counting the base pass as one step said 378 s


def test_a_grids_status_counts_every_image() -> None:
    """Variations rendered one after another: image 3 of 4 at its step 10/20 is half of the whole job."""
    sequential = RenderProgress(step=10, total=20, run_step=50, run_total=80, images=4)
    text = render_text(5, sequential, eta=None)
    assert text.startswith("🎨 Job #5: diffusion step 10/20 · 4 images\n")
    assert text.endswith(f"`{progress_bar(50 / 80)}`")
    batched = RenderProgress(step=10, total=20, run_step=10, run_total=20, images=4)
    assert render_text(5, batched, eta=None).endswith(f"`{progress_bar(0.5)}`")
    assert "images" not in render_text(5, RenderProgress(step=10, total=20), eta=None)


def test_the_help_names_every_button_a_result_has() -> None:
    for action in RESULT_ACTIONS:
        label = BUTTONS[action][1].lower()
        assert label in HELP_TEXT.lower(), f"/omost help does not mention the {label} button"
    assert len(HELP_TEXT) <= 2000  # one Discord message
