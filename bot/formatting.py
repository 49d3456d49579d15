"""What the bot shows: status texts, progress bars, result embeds, layout previews, image encoding."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import discord
from PIL import Image

from omost_engine.conditions import Condition
from omost_engine.layout import Layout
from omost_engine.params import RenderParams
from omost_engine.png import png_bytes
from omost_engine.preview import masks_image
from omost_engine.progress import LLMProgress, RenderProgress

EMBED_COLOR = 0x5865F2
ERROR_COLOR = 0xED4245
PROMPT_PREVIEW_CHARS = 200


def notify_only(user_id: int) -> discord.AllowedMentions:
    """Mentions for a message meant to notify one user: that user may be pinged, nobody else (no everyone,
    no roles, no other user named in echoed text). Every other message goes out with the bot-wide default,
    ``AllowedMentions.none()``."""
    return discord.AllowedMentions(
        everyone=False, users=[discord.Object(user_id)], roles=False, replied_user=False
    )


def progress_bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def shorten(text: str, limit: int = PROMPT_PREVIEW_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def queued_text(job_id: int, position: int) -> str:
    if position <= 1:
        return f"⏳ Job #{job_id} is next in the queue."
    return f"⏳ Job #{job_id} is queued: position {position}."


def requeued_note(attempt: int, *, waiting: bool, after_restart: bool = False) -> str:
    """The line a retried job's status message keeps: a GPU worker died under it (or the bot restarted
    while it ran) and it runs again."""
    if after_restart:
        return f"🔁 {'resumes' if waiting else 'resumed'} after a restart (attempt {attempt})"
    if waiting:
        return f"⚠️ worker lost — queued again (attempt {attempt})"
    return f"⚠️ worker lost — running again (attempt {attempt})"


def llm_text(job_id: int, progress: LLMProgress | None) -> str:
    if progress is None:
        return f"✍️ Job #{job_id}: the LLM is writing the composition…"
    regions = max(0, len(progress.conditions) - 1)  # the first condition is the global description
    return (
        f"✍️ Job #{job_id}: the LLM is writing the composition — {progress.tokens} tokens "
        f"({progress.tokens_per_second:.1f}/s), {regions} region{'s' if regions != 1 else ''} so far."
    )


def render_text(job_id: int, progress: RenderProgress | None, eta: float | None) -> str:
    if progress is None:
        return f"🎨 Job #{job_id}: rendering…"
    stage = "high-res pass" if progress.stage == "hires" else "diffusion"
    fraction = progress.step / max(progress.total, 1)
    images = ""
    if progress.images > 1:
        # Variations are one job: the bar covers every image (rendered together, or one after another).
        images = f" · {progress.images} images"
        fraction = progress.steps_done / max(progress.steps_in_all, 1)
    eta_text = f", about {format_seconds(eta)} left" if eta is not None else ""
    return (
        f"🎨 Job #{job_id}: {stage} step {progress.step}/{progress.total}{images}\n"
        f"`{progress_bar(fraction)}`{eta_text}"
    )


def preview_image(conditions: Sequence[Condition], *, size: int = 240) -> Image.Image:
    """The regions found so far: the labelled map of the layout they make (``size`` pixels square)."""
    return masks_image(Layout(list(conditions)), (size, size))


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    filename: str
    note: str | None  # set when the picture had to be re-encoded or shrunk to fit


def encode_image(image: Image.Image, *, limit: int, stem: str = "image") -> EncodedImage:
    """PNG if it fits in ``limit`` bytes; else JPEG at falling quality; else JPEG of a smaller copy."""
    data = png_bytes(image)
    if len(data) <= limit:
        return EncodedImage(data, f"{stem}.png", None)
    rgb = image.convert("RGB")
    for quality in (92, 85, 75):
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= limit:
            return EncodedImage(
                buffer.getvalue(),
                f"{stem}.jpg",
                f"sent as JPEG (quality {quality}) to fit Discord's upload limit",
            )
    scaled = rgb
    while min(scaled.size) > 16:
        scaled = scaled.resize(
            (max(1, scaled.width * 3 // 4), max(1, scaled.height * 3 // 4)), Image.Resampling.LANCZOS
        )
        buffer = io.BytesIO()
        scaled.save(buffer, format="JPEG", quality=80)
        if buffer.tell() <= limit:
            return EncodedImage(
                buffer.getvalue(),
                f"{stem}.jpg",
                f"downscaled to {scaled.width}x{scaled.height} JPEG to fit Discord's upload limit",
            )
    raise ValueError(f"cannot fit the image into {limit} bytes")


def result_embed(
    *,
    job_id: int,
    prompt: str,
    params: RenderParams,
    llm_model: str | None,
    render_model: str,
    seconds: float,
    image_filename: str,
    requester: str,
    notes: Sequence[str] = (),
    seeds: Sequence[int] = (),
) -> discord.Embed:
    """A result's embed; ``seeds``: a grid's seeds in grid order (listed instead of the one seed)."""
    embed = discord.Embed(title=shorten(prompt, 250) or "Layout render", color=EMBED_COLOR)
    embed.set_image(url=f"attachment://{image_filename}")
    if len(seeds) > 1:
        embed.add_field(name="Seeds", value=" · ".join(f"{n}: {seed}" for n, seed in enumerate(seeds, 1)))
    else:
        embed.add_field(name="Seed", value=str(params.seed))
    size = f"{params.width}x{params.height}"
    if params.output_size != (params.width, params.height):  # the high-res pass ran (an upscale)
        width, height = params.output_size
        size += f" → {width}x{height} (high-res ×{params.hr_scale:g})"
    embed.add_field(name="Size", value=size)
    embed.add_field(name="Steps · CFG", value=f"{params.steps} · {params.cfg:g}")
    method = (
        params.method
        if params.method == "omost"
        else (
            f"area (global {params.global_strength:g}, region {params.region_strength:g}, {params.overlap})"
        )
    )
    embed.add_field(name="Method", value=method)
    embed.add_field(name="LLM", value=llm_model or "— (layout file)")
    embed.add_field(name="SDXL", value=render_model)
    if params.negative:
        embed.add_field(name="Negative", value=shorten(params.negative, 200), inline=False)
    if params.positive:
        embed.add_field(name="Positive", value=shorten(params.positive, 200), inline=False)
    if notes:
        embed.add_field(name="Notes", value=shorten("\n".join(notes), 1000), inline=False)
    embed.set_footer(
        text=f"Job #{job_id} by {requester} · {format_seconds(seconds)} · reply to refine, "
        "or reply with a layout .json to render it"
    )
    return embed


def error_embed(message: str, *, title: str = "That did not work") -> discord.Embed:
    return discord.Embed(title=title, description=shorten(message, 3900), color=ERROR_COLOR)


HELP_TEXT = """\
**Omost** turns a sentence into a composed image: an LLM writes the layout (a global description plus \
regions on a 90x90 grid), then SDXL renders it region by region.

`/omost compose prompt:` — a new image; options: llm, seed, temperature, top_p, max_new_tokens, size \
(portrait, square, landscape, wide, tall, 3:2, 2:3, 16:9, 9:16 or WIDTHxHEIGHT), steps, cfg, method \
(omost or area), global_strength, region_strength, overlap, negative, positive.
**Reply** to a result with text to change it (the LLM edits the composition); replying to an older \
result branches from there. **Reply with a layout .json** (ours or ComfyUI_omost's) to render it as is.
`/omost render layout:` — render a layout file without the LLM.
`/omost new` — start a fresh conversation here. `/omost history` — your recent results.
`/omost queue` — what is waiting. `/omost cancel` — stop your job.
`/omost settings` — defaults and limits (admins). `/omost status` — the GPU workers and the queue (admins).
`count: 4` on compose or render — four variations (seeds) of one layout in a grid.
Buttons: 🎲 reroll (same layout, new seed) · 🔀 variations (four new seeds in a grid) · 🔍 upscale (the high-res pass) · 🗺️ edit regions (move, resize, reorder, rewrite and recolour regions, then render; no LLM) · ✏️ edit · 🧩 layout & masks · 🗑️ delete. On a grid: **1–4** posts that image as a result of its own, 🔁 again renders four new seeds.
"""
