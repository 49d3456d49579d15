"""What a job's messages say: the status text while it waits and runs, the result message, the end text.

Pure presentation over a ``Tracker`` (what the bot knows of one job's Discord side) and a clock; it sends
nothing (``bot/messenger.py`` does).
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from bot import formatting
from bot.jobs import Cancelled, Failed, JobOutput
from bot.views import result_view
from omost_engine.layout import Layout
from omost_engine.png import png_bytes
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.reply import extract_code
from omost_engine.variations import UPSCALE_MIN

UPLOAD_HEADROOM = 64 * 1024  # room for the layout file and the request's own bytes

MessageKwargs = Callable[[], dict[str, Any]]  # fresh keyword arguments for each try (files are read once)


@dataclass
class Tracker:
    """What the bot knows about one job's Discord side while it is queued or running."""

    job_id: int
    user_id: int
    channel_id: int
    guild_id: int | None
    turn_id: int
    prompt: str = ""
    requester: str = ""
    interaction: discord.Interaction[Any] | None = None
    message_id: int | None = None
    attached: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    phase: str = "queued"
    position: int = 0
    llm_progress: LLMProgress | None = None
    render_progress: RenderProgress | None = None
    render_started: float | None = None
    last_edit: float = -math.inf
    preview_regions: int = 0
    requeued_attempt: int | None = (
        None  # set when a lost worker (or a restart) sent the job back to the queue
    )
    requeued_after_restart: bool = False  # the bot restarted while the job ran (not a lost worker)
    result_message_id: int | None = None  # set once Discord accepted the result: never overwrite it
    # Progress edits (best effort): the status message is behind the job's state (``dirty``), a stage change
    # is waiting (``urgent``: not held back by status_interval_s), the one edit of it in flight, and the key
    # under which it waits in the messenger's queue of edits.
    dirty: bool = False
    urgent: bool = False
    edit_task: asyncio.Task[None] | None = None
    edit_key: tuple[int, int] | None = None


class StatusPresenter:
    """The text (and preview image) of a job's status message, and its result and end messages."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock

    def status(self, tracker: Tracker) -> tuple[str, discord.File | None]:
        text, preview = self.phase_status(tracker)
        if tracker.requeued_attempt is not None:  # the user keeps seeing that this is a retry
            text += "\n" + formatting.requeued_note(
                tracker.requeued_attempt,
                waiting=tracker.phase == "queued",
                after_restart=tracker.requeued_after_restart,
            )
        return text, preview

    def phase_status(self, tracker: Tracker) -> tuple[str, discord.File | None]:
        if tracker.phase == "llm":
            progress = tracker.llm_progress
            text = formatting.llm_text(tracker.job_id, progress)
            regions = len(progress.conditions) if progress else 0
            if progress is not None and regions and regions != tracker.preview_regions:
                tracker.preview_regions = regions
                png = png_bytes(formatting.preview_image(progress.conditions))
                return text, discord.File(io.BytesIO(png), filename="preview.png")
            return text, None
        if tracker.phase == "render":
            render_progress = tracker.render_progress
            eta = None
            if render_progress is not None and tracker.render_started is not None:
                # Over the whole render (base and high-res steps), not this pass alone.
                eta = render_progress.seconds_left(self.clock() - tracker.render_started)
            return formatting.render_text(tracker.job_id, render_progress, eta), None
        return formatting.queued_text(tracker.job_id, tracker.position), None

    def progress_kwargs(self, tracker: Tracker) -> MessageKwargs:
        """A progress edit of the status message (the state now; a new preview when the layout grew)."""
        content, preview = self.status(tracker)

        def edit_kwargs() -> dict[str, Any]:
            if preview is None:
                return {"content": content}
            preview.reset()
            embed = discord.Embed(description="Layout so far").set_image(url="attachment://preview.png")
            return {"content": content, "embed": embed, "attachments": [preview]}

        return edit_kwargs

    async def result_kwargs(
        self, tracker: Tracker, output: JobOutput, *, upload_limit: int, requester: str
    ) -> MessageKwargs:
        """The result message: the image (fitted to ``upload_limit``), its layout file, the embed, the buttons."""
        render = output.render
        layout_file = (
            result_layout(output, job_id=tracker.job_id, prompt=tracker.prompt).dumps().encode("utf-8")
        )
        notes: list[str] = []
        if output.chat is not None:
            notes += list(output.chat.notes)
            if output.chat.trimmed_turns:
                notes.append(
                    f"the {output.chat.trimmed_turns} oldest turns were left out to fit the LLM's context"
                )
        notes += list(output.layout.warnings)[:5]
        # PNG/JPEG encoding of a full-size image takes tens of milliseconds: keep it off the event loop.
        image = await asyncio.to_thread(
            formatting.encode_image,
            render.image,
            limit=max(upload_limit - len(layout_file) - UPLOAD_HEADROOM, 64 * 1024),
            stem="grid" if render.count > 1 else "image",
        )
        if image.note:
            notes.append(image.note)
        seconds = render.seconds + (output.chat.seconds if output.chat else 0.0)
        embed = formatting.result_embed(
            job_id=tracker.job_id,
            prompt=tracker.prompt,
            params=render.params,
            llm_model=output.chat.model if output.chat else None,
            render_model=render.model,
            seconds=seconds,
            image_filename=image.filename,
            requester=requester,
            notes=notes,
            seeds=render.seeds,
        )
        content = f"✅ Done, <@{tracker.user_id}>."
        if render.count > 1:
            content += f" Pick an image with 1–{render.count}, or **Again** for {render.count} new seeds."
        view = result_view(tracker.job_id, count=render.count, upscaled=render.params.hr_scale > UPSCALE_MIN)

        def kwargs() -> dict[str, Any]:
            return {
                "content": content,
                "embed": embed,
                "view": view,
                "attachments": [
                    discord.File(io.BytesIO(image.data), filename=image.filename),
                    discord.File(io.BytesIO(layout_file), filename="layout.json"),
                ],
            }

        return kwargs


def end_text(job_id: int, event: Failed | Cancelled) -> tuple[str, str | None, str]:
    """(state, error, text) for a job that ended without a result."""
    if isinstance(event, Cancelled):
        return "cancelled", None, f"✖️ Job #{job_id} was cancelled."
    return "failed", event.message, f"❌ Job #{job_id} failed: {event.message}"


def plain_kwargs(text: str) -> MessageKwargs:
    """A status message that only says ``text`` (no embed, files or buttons)."""
    return lambda: {"content": text, "embed": None, "attachments": [], "view": None}


def result_layout(output: JobOutput, *, job_id: int, prompt: str) -> Layout:
    """The layout file attached to a result: everything that reproduces it (docs/canvas.md)."""
    render = output.render
    meta: dict[str, Any] = {
        "job": job_id,
        "prompt": prompt,
        "render": render.params.to_dict(),
        "sdxl": render.model,
        "seconds": round(render.seconds + (output.chat.seconds if output.chat else 0.0), 3),
    }
    layout = output.layout
    overrides = list(layout.meta.get("overrides") or [])
    if output.chat is not None:
        meta["llm"] = output.chat.model
        meta["program"] = extract_code(output.chat.reply)
    elif layout.meta.get("sdxl") and layout.meta.get("sdxl") != render.model:  # a file made elsewhere
        overrides.append(f"sdxl: {layout.meta['sdxl']!r} -> {render.model!r} (this bot's model)")
    meta["overrides"] = overrides
    return layout.with_meta(**meta)
