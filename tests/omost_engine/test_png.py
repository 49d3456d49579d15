"""The one PNG encoder: lossless at every compression level."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from omost_engine.png import png_bytes


def test_png_bytes_round_trip_at_every_level() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    for level in (0, 1, 6, 9):
        data = png_bytes(image, compress_level=level)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    assert png_bytes(image) == png_bytes(image, compress_level=6)
