"""PNG bytes of a picture: the one encoder the bot (Discord uploads) and the Redis workers (results
on the wire) share."""

from __future__ import annotations

import io

from PIL import Image


def png_bytes(image: Image.Image, *, compress_level: int = 6) -> bytes:
    """``image`` as PNG. ``compress_level`` 0-9 (Pillow's default 6); 1 is several times faster and
    a little larger, for bytes that are re-encoded later anyway."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def png_image(data: bytes) -> Image.Image:
    """A picture from PNG bytes, fully read (the bytes may go away)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
