"""One ``WxH`` parser for the render size (presets or WxH) and the sketch size (16-2048 a side)."""

from __future__ import annotations

import pytest

from omost_engine.errors import OmostError
from omost_engine.params import RenderParams, parse_width_height
from omost_engine.preview import parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512x768", (512, 768)),
        ("512X768", (512, 768)),
        ("512×768", (512, 768)),
        (" 512 x 768 ", (512, 768)),
    ],
)
def test_both_callers_read_the_same_spellings(text: str, size: tuple[int, int]) -> None:
    assert parse_width_height(text) == size
    assert RenderParams.size_from_aspect(text) == size
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "512", "512x", "x512", "512x768x2", "-5x5", "5.5x5", "axb"])
def test_anything_else_is_not_a_size(text: str) -> None:
    assert parse_width_height(text) is None


def test_a_digit_int_cannot_read_is_one_clear_error() -> None:
    # "²".isdigit() is true but int("²") fails: the render size once let that through as a ValueError.
    with pytest.raises(OmostError, match="size must be WIDTHxHEIGHT"):
        RenderParams.size_from_aspect("²x512")
