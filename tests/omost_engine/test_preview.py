"""Pictures of a layout: the sketch (pixel-identical at 90x90) and the labelled region map."""

from __future__ import annotations

import numpy as np
import pytest

from omost_engine.errors import OmostError
from omost_engine.preview import OUTLINES, masks_image, parse_size, short_label, sketch_image
from omost_engine.reply import parse_reply


@pytest.fixture(scope="module")
def layout(golden):
    return parse_reply(golden("01")["bot_response"])


def test_sketch_at_90_is_the_originals_initial_latent(layout, golden, decode_rle) -> None:
    image = sketch_image(layout)
    assert image.mode == "RGB" and image.size == (90, 90)
    assert np.array_equal(np.asarray(image), decode_rle(golden("01")["process_output"]["initial_latent"]))


def test_larger_sketches_are_nearest_neighbour_upscales(layout) -> None:
    small = np.asarray(sketch_image(layout))
    big = np.asarray(sketch_image(layout, (720, 360)))
    assert big.shape == (360, 720, 3)
    assert np.array_equal(big[::4, ::8], small)  # every 8x4 block is one grid cell
    assert np.array_equal(big[3::4, 7::8], small)


def test_masks_image_outlines_and_labels_every_region(layout) -> None:
    image = masks_image(layout, (720, 720))
    pixels = np.asarray(image)
    assert image.size == (720, 720) and image.mode == "RGB"
    for number, cond in enumerate(layout.conditions[1:], start=1):
        top, bottom, left, right = cond.rect
        outline = np.array(OUTLINES[(number - 1) % len(OUTLINES)])
        # Somewhere along its left and right edges the box keeps its own outline colour
        # (later outlines may cross it in places).
        for x in (left * 8 + 1, right * 8 - 2):
            column = pixels[top * 8 : bottom * 8, x]
            assert (column == outline).all(axis=1).sum() > 40, (number, x)
    label_zone = pixels[2:40, 2:300]  # region 1 (the sky) is labelled in its top-left corner
    assert (np.abs(label_zone.astype(int) - np.array(OUTLINES[0])).sum(axis=2) < 60).sum() > 30


def test_masks_image_differs_from_the_sketch_and_scales(layout) -> None:
    small = masks_image(layout, (180, 120))
    assert small.size == (180, 120)
    assert not np.array_equal(np.asarray(small), np.asarray(sketch_image(layout, (180, 120))))


def test_short_labels() -> None:
    assert short_label(2, ("Global.", "A mighty dragon.")) == "2 A mighty dragon"
    long = short_label(1, ("g", "A stormy sky with flashes of lightning over the sea."))
    assert long.startswith("1 A stormy sky") and long.endswith("…") and len(long) <= 34


@pytest.mark.parametrize(
    ("text", "size"), [("90x90", (90, 90)), ("512X768", (512, 768)), (" 1024 x 16 ", (1024, 16))]
)
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "90", "0x90", "90x4096", "axb", "-5x5", "90x90x90"])
def test_bad_sizes_are_one_clear_error(text: str) -> None:
    with pytest.raises(OmostError, match="allowed: WxH with each side from 16 to 2048"):
        parse_size(text)


def test_partial_layouts_while_a_reply_streams_are_drawn(layout) -> None:
    from omost_engine.layout import Layout

    regions_only = Layout(layout.conditions[1:3])
    assert regions_only.global_condition is None and regions_only.regions == layout.conditions[1:3]
    assert masks_image(regions_only, (90, 90)).size == (90, 90)
    sketch = np.asarray(sketch_image(regions_only))
    uncovered = [(y, x) for y in range(90) for x in range(90)
                 if not any(t <= y < b and le <= x < r for t, b, le, r in (c.rect for c in regions_only.regions))]  # fmt: skip
    assert uncovered and all((sketch[y, x] == 0).all() for y, x in uncovered)  # black where no region is
    empty = Layout([])
    assert np.asarray(sketch_image(empty)).max() == 0 and masks_image(empty, (64, 64)).size == (64, 64)


def test_the_selected_region_is_outlined_in_white_over_the_others(layout) -> None:
    plain = np.asarray(masks_image(layout, (720, 720)))
    marked = np.asarray(masks_image(layout, (720, 720), selected=2))
    top, bottom, left, right = layout.conditions[2].rect
    x0, x1 = left * 720 // 90, right * 720 // 90 - 1
    column = slice(top * 720 // 90 + 40, bottom * 720 // 90 - 40)  # away from the labels at the top
    for x in (x0, x1):
        white = (marked[column, x] == 255).all(axis=1)
        assert white.mean() > 0.9  # white along both sides over other boxes (labels stay on top)
        assert not (plain[column, x] == 255).all(axis=1).any()
    assert np.array_equal(marked[:, : max(0, x0 - 8)], plain[:, : max(0, x0 - 8)])  # nothing else moved
