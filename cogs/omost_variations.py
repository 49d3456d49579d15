"""Variations, Again, pick and Upscale: renders of a result's own layout (issue 12), as the ``/omost``
cog's job-button actions. Checks and queueing are ``OmostActions``'; what is special here is which images
a job makes (a grid of four seeds, one picked image, an upscale from the kept image).
"""

from __future__ import annotations

import asyncio
from typing import Any

import discord

from bot.job_store import STORED_LAYOUT_BYTES
from bot.jobs import JobOutput
from bot.settings import enforce_limits
from bot.storage import JobRecord
from bot.views import PICK_PREFIX
from cogs.omost_actions import ButtonAction, OmostActions, new_seed
from omost_engine.engine import RenderResult
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.png import png_image
from omost_engine.preview import masks_image
from omost_engine.variations import MAX_COUNT, upscale_params, variation_seeds


class VariationActions:
    """The grid and upscale buttons, over ``OmostActions`` (its checks, its job queue, its storage)."""

    def __init__(self, actions: OmostActions) -> None:
        self.actions = actions

    def buttons(self) -> dict[str, ButtonAction]:
        """Action -> handler, for the job buttons' registry."""
        return {
            "variations": self.variations,
            "again": self.variations,
            "upscale": self.upscale,
            **{f"{PICK_PREFIX}{n}": self._picker(n - 1) for n in range(1, MAX_COUNT + 1)},
        }

    async def variations(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        """Variations of a result, or Again on a grid: the same layout, four new seeds, one job."""
        await self.actions.require_layout(job, "vary")
        policy = await self.actions.admit_interaction(interaction)
        params = enforce_limits(policy, job.render_params.replace(seed=new_seed()), count=MAX_COUNT)
        request = await self.actions.same_layout(interaction, job, params, count=MAX_COUNT)
        await self.actions.start_job(interaction, request, policy)

    async def upscale(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        """The high-res pass on a single result's layout and seed, at the channel's upscale factor; it starts
        from the result's kept image (only the high-res pass runs), else renders it in full."""
        if job.count > 1:
            raise OmostError(
                f"job #{job.id} is a grid of {job.count} images; pick one (1–{job.count}) and upscale that",
                parameter="job",
                value=job.id,
            )
        await self.actions.require_layout(job, "upscale")
        policy = await self.actions.admit_interaction(interaction)
        params = enforce_limits(policy, upscale_params(job.render_params, policy.upscale_scale))
        request = await self.actions.same_layout(interaction, job, params, base_job_id=job.id)
        await self.actions.start_job(interaction, request, policy)

    def _picker(self, index: int) -> ButtonAction:
        async def pick(interaction: discord.Interaction[Any], job: JobRecord) -> None:
            await self.pick(interaction, job, index)

        return pick

    async def pick(self, interaction: discord.Interaction[Any], job: JobRecord, index: int) -> None:
        """Image ``index`` (0-based) of a grid as a result of its own: posted from the kept image without
        rendering; once the image is no longer kept, a render of its seed is queued instead."""
        if job.count < 2 or not 0 <= index < job.count:
            allowed = f"1 to {job.count}" if job.count > 1 else "none: it is a single image"
            raise OmostError(
                f"job #{job.id} has no image {index + 1} to pick (allowed: {allowed})",
                parameter="index",
                value=index + 1,
                allowed=allowed,
            )
        data = await self.actions.require_layout(job, "pick from")
        policy = await self.actions.admit_interaction(interaction)
        kept = await self.actions.storage.result_image(job.id, index)
        seed = kept.seed if kept is not None else variation_seeds(job.render_params.seed, job.count)[index]
        params = enforce_limits(policy, job.render_params.replace(seed=seed))
        request = await self.actions.same_layout(interaction, job, params)
        if kept is None:
            await self.actions.start_job(interaction, request, policy)
            await interaction.followup.send(
                f"ℹ️ The images of job #{job.id} are no longer kept, so image {index + 1} (seed {seed}) "
                "is rendered again.",
                ephemeral=True,
            )
            return
        layout = Layout.loads(data, max_bytes=STORED_LAYOUT_BYTES)
        # Decoding a full-size PNG and drawing the masks take tens of milliseconds: off the event loop.
        image, masks = await asyncio.to_thread(lambda: (png_image(kept.png), masks_image(layout)))
        render = RenderResult(
            image=image,
            masks=masks,
            model=job.render_model or self.actions.config.sdxl or "",
            seconds=0.0,
            params=params,
        )

        async def send(message: dict[str, Any]) -> discord.Message:
            files = message.pop("attachments")
            callback = await interaction.response.send_message(**message, files=files)
            if isinstance(callback.resource, discord.InteractionMessage):
                return callback.resource
            return await interaction.original_response()

        await self.actions.jobs.post_result(
            request, JobOutput(chat=None, render=render, layout=layout), send, interaction=interaction
        )
