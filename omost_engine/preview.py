"""Pictures of a layout: the colour sketch and a labelled map of the region boxes.

``sketch_image`` at 90x90 is pixel-identical to the original's ``initial_latent``; larger sizes
are a nearest-neighbour upscale (the grid stretches with the aspect ratio, as the renderer's
masks do). ``masks_image`` draws each region's box with its number and a short description, so a
user can say "make region 2 bigger" and edit the layout file.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from omost_engine.conditions import GRID
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.params import parse_width_height

MIN_SIDE, MAX_SIDE = 16, 2048
MASKS_SIZE = (720, 720)  # default for the labelled map: labels need room
LABEL_CHARS = 32
# Outline colours that stand out on most sketches; regions cycle through them.
OUTLINES = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (0, 220, 120), (255, 96, 255), (0, 230, 230),
            (255, 140, 0), (160, 120, 255))  # fmt: skip


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H), each from 16 to 2048."""
    width, height = parse_width_height(text) or (0, 0)
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise OmostError(
            f"size {text!r} is not valid; allowed: WxH with each side from {MIN_SIDE} to {MAX_SIDE}, e.g. 90x90 or 512x768",
            parameter="size",
            value=text,
            allowed=f"WxH, {MIN_SIDE}-{MAX_SIDE} each",
        )
    return width, height


def sketch_image(layout: Layout, size: tuple[int, int] = (GRID, GRID)) -> Image.Image:
    """The colour sketch as an RGB image (nearest-neighbour upscale beyond 90x90)."""
    image = Image.fromarray(layout.sketch(), mode="RGB")
    width, height = size
    return (
        image if (width, height) == (GRID, GRID) else image.resize((width, height), Image.Resampling.NEAREST)
    )


def short_label(number: int, prefixes: tuple[str, ...]) -> str:
    """``"2 A mighty dragon"``: the region number and its own description, shortened."""
    text = (prefixes[-1] if prefixes else "").strip().rstrip(".")
    if len(text) > LABEL_CHARS:
        text = text[: LABEL_CHARS - 1].rstrip() + "…"
    return f"{number} {text}".strip()


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(10, height // 40))


def masks_image(
    layout: Layout, size: tuple[int, int] = MASKS_SIZE, *, selected: int | None = None
) -> Image.Image:
    """The region boxes over a dimmed sketch, each outlined and labelled with its number.

    Region numbers follow the layout order (1 = farthest); the global condition is 0 and is
    labelled in the bottom-left corner. A partial layout (no global condition yet, or no
    conditions at all) is drawn too. ``selected`` (the region editor's selection) is outlined in
    white, three times as thick, over every other box.
    """
    width, height = size
    base = sketch_image(layout, size).convert("RGBA")
    dimmed = Image.blend(base, Image.new("RGBA", size, (24, 24, 24, 255)), 0.55)
    overlay = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = _font(height)
    line = max(2, min(width, height) // 180)
    pad = line + 2
    boxes = []
    for number, cond in enumerate(layout.regions, start=1):
        top, bottom, left, right = cond.rect
        box = (
            left * width // GRID,
            top * height // GRID,
            right * width // GRID - 1,
            bottom * height // GRID - 1,
        )
        boxes.append((number, cond, box, OUTLINES[(number - 1) % len(OUTLINES)]))
        draw.rectangle(box, fill=(*cond.color, 48))
    # Outlines, then labels, each over everything before them, so no label is hidden by a later box.
    for number, _, box, outline in boxes:
        if number != selected:
            draw.rectangle(box, outline=(*outline, 255), width=line)
    for number, _, box, _ in boxes:
        if number == selected:
            draw.rectangle(box, outline=(255, 255, 255, 255), width=3 * line)
    step = draw.textbbox((0, 0), "0", font=font)[3] + 6
    for number, cond, box, outline in boxes:
        # Stagger labels so boxes that share a corner do not stack their labels on each other.
        anchor = (box[0] + pad, box[1] + pad + (number - 1) % 3 * step)
        label = short_label(number, cond.prefixes)
        bbox = draw.textbbox(anchor, label, font=font)
        draw.rectangle((bbox[0] - 2, bbox[1] - 2, bbox[2] + 2, bbox[3] + 2), fill=(0, 0, 0, 190))
        draw.text(anchor, label, font=font, fill=(*outline, 255))
    if layout.global_condition is None:  # a partial layout while a reply streams
        return Image.alpha_composite(dimmed, overlay).convert("RGB")
    glob = short_label(0, layout.global_condition.prefixes)
    bbox = draw.textbbox((pad, height - pad), glob, font=font, anchor="ld")
    draw.rectangle((bbox[0] - 2, bbox[1] - 2, bbox[2] + 2, bbox[3] + 2), fill=(0, 0, 0, 190))
    draw.text((pad, height - pad), glob, font=font, fill=(255, 255, 255, 255), anchor="ld")
    return Image.alpha_composite(dimmed, overlay).convert("RGB")
