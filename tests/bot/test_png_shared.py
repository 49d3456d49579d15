"""The bot's uploads and the Redis workers' results use omost_engine's PNG encoder, not copies."""

from __future__ import annotations

from PIL import Image

from bot import formatting
from bot.distributed import protocol
from omost_engine.png import png_bytes


def test_the_bot_and_the_wire_encode_with_the_engines_png_bytes() -> None:
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    assert formatting.png_bytes is png_bytes
    assert protocol.png_bytes(image) == png_bytes(image, compress_level=1)  # light compression on the wire
    assert protocol.png_image(protocol.png_bytes(image)).getpixel((5, 5)) == (10, 200, 30)
