"""What each ``/omost`` action does: checks, then a job (or an answer). The cog's commands, the job
buttons and the reply listener call these.

Every refusal is an ``OmostError`` raised before anything is stored or queued; the tree's error handler
turns it into one ephemeral message (buttons and the edit modal answer the same way; a reply gets a reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

import aiohttp
import discord

from bot import formatting
from bot.access import is_admin, require_bot_permissions, require_channel_allowed, require_rate
from bot.config import BotConfig
from bot.events import JobUpdate
from bot.job_store import (
    STORED_LAYOUT_BYTES,
    JobRequest,
    check_layout_size,
    describe_layout,
    layout_from_upload,
    params_from_layout,
)
from bot.jobs import JobOutput
from bot.settings import (
    RENDER_OPTIONS,
    Policy,
    build_params,
    enforce_limits,
    require_llm_allowed,
    resolve_policy,
    with_decoding,
)
from bot.storage import JobRecord, Storage
from bot.views import send_error
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.params import MAX_SEED, RenderParams, describe_overrides
from omost_engine.png import png_bytes
from omost_engine.preview import masks_image, sketch_image

log = logging.getLogger(__name__)


def new_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def is_layout_file(attachment: discord.Attachment) -> bool:
    """A ``.json`` file by its name or its content type."""
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    return attachment.filename.lower().endswith(".json") or content_type == "application/json"


def require_layout_file(attachment: discord.Attachment) -> None:
    if not is_layout_file(attachment):
        raise OmostError(
            f"only `.json` layout files can be attached; `{formatting.shorten(attachment.filename, 80)}` "
            "is not one (reply with text to change the picture, or with a layout .json to render it)",
            parameter="layout",
            value=attachment.filename,
            allowed=".json layout files (ours or ComfyUI_omost's)",
        )


async def download_layout(attachment: discord.Attachment, *, max_bytes: int, timeout_s: float) -> bytes:
    """The bytes of a user's layout file from Discord's CDN: the one way every path reads an attachment.

    Refused before downloading when the attachment says it is over ``max_bytes``, and after when more
    arrived; the download stops after ``timeout_s``. Every failure (404, 403, another status, a timeout,
    a dropped connection) is one ``OmostError`` for the user; nothing else escapes.
    """
    check_layout_size(attachment.size, max_bytes=max_bytes)
    name = formatting.shorten(attachment.filename, 80)
    try:
        async with asyncio.timeout(timeout_s):
            data = await attachment.read()
    except TimeoutError:
        log.warning("attachment %s: no answer from the CDN within %g s", attachment.id, timeout_s)
        raise OmostError(
            f"Discord did not hand over `{name}` within {timeout_s:g} s; please try again in a moment",
            parameter="layout",
        ) from None
    except discord.NotFound:
        raise OmostError(
            f"`{name}` is no longer on Discord (was the message deleted?); attach it again",
            parameter="layout",
        ) from None
    except discord.Forbidden:
        raise OmostError(
            f"Discord refused to hand over `{name}`; attach it again", parameter="layout"
        ) from None
    except discord.HTTPException as exc:
        log.warning("attachment %s: the CDN answered %s", attachment.id, exc.status)
        raise OmostError(
            f"Discord could not hand over `{name}` (HTTP {exc.status}); please try again in a moment",
            parameter="layout",
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("attachment %s: the download failed: %s", attachment.id, type(exc).__name__)
        raise OmostError(
            f"the download of `{name}` from Discord was cut off; please try again in a moment",
            parameter="layout",
        ) from None
    check_layout_size(len(data), max_bytes=max_bytes)
    return data


class JobQueue(Protocol):
    """The part of the job service the actions use: store and queue a request, show it, cancel it."""

    async def enqueue(self, request: JobRequest, *, user_cap: int | None) -> tuple[int, int]: ...

    async def announce(
        self,
        job_id: int,
        position: int,
        send: Callable[..., Awaitable[discord.Message | None]],
        *,
        interaction: discord.Interaction[Any] | None = None,
    ) -> discord.Message | None: ...

    async def cancel(self, job_id: int) -> bool: ...

    async def post_result(
        self,
        request: JobRequest,
        output: JobOutput,
        send: Callable[[dict[str, Any]], Awaitable[discord.Message]],
        *,
        interaction: discord.Interaction[Any] | None = None,
    ) -> int: ...


ButtonAction = Callable[[discord.Interaction[Any], JobRecord], Awaitable[None]]
JobFollower = Callable[[JobUpdate], Awaitable[None]]


def jump_url(guild_id: int | None, channel_id: int, message_id: int) -> str:
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


class EditModal(discord.ui.Modal):
    """Asks what to change; the answer becomes the next turn after the result's turn."""

    change: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
        label="What should change?",
        style=discord.TextStyle.paragraph,
        max_length=2000,
        placeholder="e.g. make it night time and add a full moon",
    )

    def __init__(
        self, job_id: int, on_submit: Callable[[discord.Interaction[Any], int, str], Awaitable[None]]
    ) -> None:
        super().__init__(title=f"Edit job #{job_id}", custom_id=f"omost:editmodal:{job_id}", timeout=900)
        self.job_id = job_id
        self._submitted = on_submit

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self._submitted(interaction, self.job_id, self.change.value)


class OmostActions:
    """What each user action does, over the storage, the job queue and the configuration (not the bot)."""

    def __init__(self, *, storage: Storage, jobs: JobQueue, config: BotConfig) -> None:
        self.storage = storage
        self.jobs = jobs
        self.config = config
        # The job buttons' actions (bot/views.py draws them; the custom_id names the action).
        self.buttons: dict[str, ButtonAction] = {
            "reroll": self.reroll,
            "layout": self.show_layout,
            "edit": self.open_edit,
            "delete": self.delete_result,
            "cancel": self.cancel,
        }  # the variations' buttons (cogs/omost_variations.py) and Edit regions join it from the cog
        # Jobs an action follows until they end (the job service's updates reach the cog as events).
        self.followers: dict[int, list[JobFollower]] = {}
        self._follower_tasks: set[asyncio.Task[None]] = set()

    # -- job updates -------------------------------------------------------------------------------------

    def follow(self, job_id: int, follower: JobFollower) -> None:
        """Call ``follower`` with each update of the job until (and including) the one that ends it."""
        self.followers.setdefault(job_id, []).append(follower)

    def on_job_update(self, update: JobUpdate) -> None:
        """The cog's subscription to the job service's updates: hand them to the job's followers."""
        followers = (
            self.followers.pop(update.job_id, []) if update.ended else self.followers.get(update.job_id, [])
        )
        for follower in followers:
            task = asyncio.ensure_future(self._run_follower(follower, update))
            self._follower_tasks.add(task)
            task.add_done_callback(self._follower_tasks.discard)

    async def _run_follower(self, follower: JobFollower, update: JobUpdate) -> None:
        try:
            await follower(update)
        except Exception:  # a follower only adds to what the job's own messages say: log it and go on
            log.exception("job %s: acting on its %s update failed", update.job_id, update.phase)

    async def drain(self) -> None:
        """Wait for the followers still running (shutdown, tests)."""
        while self._follower_tasks:
            await asyncio.gather(*list(self._follower_tasks), return_exceptions=True)

    # -- checks ----------------------------------------------------------------------------------------

    def check_prompt(self, prompt: str | None) -> str:
        text = (prompt or "").strip()
        limit = self.config.max_prompt_chars
        if not text:
            raise OmostError(
                "the prompt is empty; describe the image you want",
                parameter="prompt",
                allowed=f"1..{limit} characters",
            )
        if len(text) > limit:
            raise OmostError(
                f"the prompt is {len(text)} characters long; at most {limit} are allowed",
                parameter="prompt",
                value=len(text),
                allowed=f"1..{limit} characters",
            )
        return text

    async def admit(
        self, *, user_id: int, guild_id: int | None, channel: Any, bot_permissions: discord.Permissions
    ) -> Policy:
        """The channel's policy, once the user may start a job here now."""
        if guild_id is None:
            raise OmostError("Omost works in server channels, not in direct messages", parameter="channel")
        policy = await resolve_policy(self.storage, self.config, guild_id=guild_id, channel_id=channel.id)
        require_channel_allowed(policy, channel)
        require_bot_permissions(bot_permissions)
        await require_rate(self.storage, policy, user_id=user_id, window_s=self.config.rate_window_s)
        return policy

    async def admit_interaction(self, interaction: discord.Interaction[Any]) -> Policy:
        """The channel's policy once the user of ``interaction`` may start a job here now."""
        return await self.admit(
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel=interaction.channel,
            bot_permissions=interaction.app_permissions,
        )

    async def _job(self, job_id: int) -> JobRecord:
        job = await self.storage.job(job_id)
        if job is None:
            raise OmostError(f"job #{job_id} does not exist", parameter="job", value=job_id)
        return job

    # -- starting jobs ---------------------------------------------------------------------------------

    async def start_job(
        self, interaction: discord.Interaction[Any], request: JobRequest, policy: Policy
    ) -> None:
        """Queue ``request`` and post its status message as the answer to ``interaction``."""
        job_id, position = await self.jobs.enqueue(request, user_cap=policy.max_queued_per_user)

        async def send(content: str, *, view: discord.ui.View) -> discord.Message:
            if interaction.response.is_done():  # deferred (privately) while a file was read: answer, then
                # the status message follows for everyone
                await interaction.edit_original_response(content=f"📥 Job #{job_id} is queued.")
                self.follow(job_id, lambda update: self._update_private_answer(interaction, update))
                return await interaction.followup.send(content, view=view, wait=True)
            callback = await interaction.response.send_message(content, view=view)
            if isinstance(callback.resource, discord.InteractionMessage):
                return callback.resource  # saves fetching the message again
            return await interaction.original_response()

        await self.jobs.announce(job_id, position, send, interaction=interaction)

    async def _update_private_answer(self, interaction: discord.Interaction[Any], update: JobUpdate) -> None:
        """The private "queued" answer of a deferred command says how its job ended, with a link to the
        result, so that it is not left saying "queued" (best effort: the token lasts 15 minutes)."""
        if not update.ended:
            return
        if update.phase == "done" and update.message_id is not None:
            text = f"✅ Job #{update.job_id} is done: {jump_url(update.guild_id, update.channel_id, update.message_id)}"
        elif update.phase == "failed":
            text = f"❌ Job #{update.job_id} failed: {update.error or 'see its message'}."
        else:
            text = f"✖️ Job #{update.job_id} was {'cancelled' if update.phase == 'cancelled' else 'stopped'}."
        try:
            await interaction.edit_original_response(content=text)
        except discord.HTTPException as exc:  # the token expired: the job's own message says it all
            log.info("job %s: could not update its private answer: %s", update.job_id, exc)

    async def compose(
        self, interaction: discord.Interaction[Any], prompt: str, options: dict[str, Any]
    ) -> None:
        prompt = self.check_prompt(prompt)
        policy = await self.admit_interaction(interaction)
        llm, llm_params, render_params = build_params(policy, options, seed=new_seed())
        request = JobRequest(
            kind="compose",
            user_id=interaction.user.id,
            requester=interaction.user.display_name,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
            prompt=prompt,
            llm=llm,
            llm_params=llm_params,
            render_params=render_params,
            count=options.get("count") or 1,
        )
        await self.start_job(interaction, request, policy)

    async def render_upload(
        self, interaction: discord.Interaction[Any], attachment: discord.Attachment, options: dict[str, Any]
    ) -> None:
        limit = self.config.max_layout_bytes
        require_layout_file(attachment)
        check_layout_size(attachment.size, max_bytes=limit)
        policy = await self.admit_interaction(interaction)
        # Acknowledge before downloading: the CDN may be slow, and Discord waits 3 seconds for an answer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await download_layout(attachment, max_bytes=limit, timeout_s=self.config.download_timeout_s)
        layout = layout_from_upload(data, max_bytes=limit)
        request = self._render_request(
            layout,
            policy,
            options,
            user=interaction.user,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
        )
        await self.start_job(interaction, request, policy)

    def _render_request(
        self,
        layout: Layout,
        policy: Policy,
        options: dict[str, Any],
        *,
        user: discord.abc.User,
        guild_id: int | None,
        channel_id: int,
        base: JobRecord | None = None,
    ) -> JobRequest:
        # Precedence: channel defaults < the source result's settings < the file's own < the user's options.
        # The file's values count as asked for: held to the channel's limits, never silently lowered.
        render_base = base.render_params if base is not None else policy.render_params
        file_settings = layout.render_settings
        file_params = params_from_layout(layout, render_base)
        given = {k: v for k, v in options.items() if v is not None}
        asked = {**{k: getattr(file_params, k) for k in file_settings if k in RENDER_OPTIONS}, **given}
        seed = file_params.seed if "seed" in file_settings else new_seed()
        _, llm_params, render_params = build_params(
            replace(policy, render_params=file_params), asked, seed=seed
        )
        overrides = list(layout.meta.get("overrides") or [])
        overrides += describe_overrides(file_params, render_params, given, source="option")
        meta: dict[str, object] = {
            k: layout.meta[k] for k in ("llm", "llm_params", "prompt", "program") if k in layout.meta
        }
        meta["render"] = file_params.to_dict() if file_settings else None
        # What loading assumed (an old file upgraded, a bare ComfyUI list) is shown with the result and kept.
        warnings = [*layout.notes, *layout.warnings]  # the record keeps the first MAX_WARNINGS
        stored = Layout(list(layout.conditions), warnings=warnings, meta={**meta, "overrides": overrides})
        return JobRequest(
            kind="render",
            user_id=user.id,
            requester=user.display_name,
            guild_id=guild_id,
            channel_id=channel_id,
            prompt=describe_layout(layout),
            llm=None,
            llm_params=llm_params,
            render_params=render_params,
            layout_json=stored.dumps(),
            count=given.get("count", 1),
        )

    def _refine_request(
        self,
        source: JobRecord,
        prompt: str,
        policy: Policy,
        *,
        user: discord.abc.User,
        guild_id: int | None,
        channel_id: int,
    ) -> JobRequest:
        """A new turn after ``source``'s, with its model and settings (a reply or an edit)."""
        require_llm_allowed(policy, source.llm)
        return JobRequest(
            kind="compose",
            user_id=user.id,
            requester=user.display_name,
            guild_id=guild_id,
            channel_id=channel_id,
            prompt=prompt,
            llm=source.llm,
            llm_params=with_decoding(policy, source.llm_params),
            render_params=enforce_limits(policy, source.render_params),  # the channel's limits of today
            parent_turn_id=source.turn_id,
        )

    async def on_reply(self, message: discord.Message) -> None:
        """A message replying to one of our results: a refinement, or a layout file to render."""
        if message.author.bot or message.reference is None or message.reference.message_id is None:
            return
        source = await self.storage.job_by_message(message.reference.message_id)
        if source is None:
            return
        try:
            await self._reply_job(message, source)
        except OmostError as exc:
            await self._answer_reply(message, str(exc))
        except Exception:  # a bug: logged with its traceback; the user still gets an answer
            log.exception("the reply %s to job #%s failed", message.id, source.id)
            await self._answer_reply(
                message, "something went wrong on my side; the error was logged. Please try again"
            )

    async def _answer_reply(self, message: discord.Message, text: str) -> None:
        try:
            await message.reply(f"⚠️ {text}", mention_author=False)
        except discord.HTTPException as exc:
            log.warning("could not answer a reply: %s", exc)

    async def _reply_job(self, message: discord.Message, source: JobRecord) -> None:
        guild = message.guild
        if guild is None:
            return
        files = [a for a in message.attachments if is_layout_file(a)]
        if not files and message.attachments and not message.content.strip():  # a picture, say, and no text
            require_layout_file(message.attachments[0])
        limit = self.config.max_layout_bytes
        if files:
            check_layout_size(files[0].size, max_bytes=limit)
        prompt = None if files else self.check_prompt(message.content)
        channel = message.channel
        policy = await self.admit(
            user_id=message.author.id,
            guild_id=guild.id,
            channel=channel,
            bot_permissions=channel.permissions_for(guild.me),
        )
        if files:
            data = await download_layout(files[0], max_bytes=limit, timeout_s=self.config.download_timeout_s)
            layout = layout_from_upload(data, max_bytes=limit)
            request = self._render_request(
                layout, policy, {}, user=message.author, guild_id=guild.id, channel_id=channel.id, base=source
            )
        else:
            assert prompt is not None
            request = self._refine_request(
                source, prompt, policy, user=message.author, guild_id=guild.id, channel_id=channel.id
            )
        job_id, position = await self.jobs.enqueue(request, user_cap=policy.max_queued_per_user)

        async def send(content: str, *, view: discord.ui.View) -> discord.Message:
            return await message.reply(content, view=view, mention_author=False)

        await self.jobs.announce(job_id, position, send)

    # -- buttons and the edit modal ------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: str, job_id: int) -> None:
        """A click on a job's button (a refusal is answered like a command's, as one private line)."""
        try:
            await self.buttons[action](interaction, await self._job(job_id))
        except OmostError as exc:
            await send_error(interaction, str(exc))

    def _may_manage(self, interaction: discord.Interaction[Any], job: JobRecord) -> bool:
        return interaction.user.id == job.user_id or is_admin(interaction.permissions)

    async def require_layout(self, job: JobRecord, what: str) -> str:
        """The job's stored layout; one clear refusal when it has none (an LLM step that failed, a row gone)."""
        data = await self.storage.layout(job.layout_id) if job.layout_id is not None else None
        if data is None:
            raise OmostError(f"job #{job.id} has no layout to {what}", parameter="job", value=job.id)
        return data

    async def same_layout(
        self,
        interaction: discord.Interaction[Any],
        job: JobRecord,
        render_params: RenderParams,
        *,
        count: int = 1,
        base_job_id: int | None = None,
    ) -> JobRequest:
        """A render of ``job``'s layout in its turn (a reroll, variations, a pick, an upscale)."""
        turn = await self.storage.turn(job.turn_id)
        return JobRequest(
            kind="render",
            user_id=interaction.user.id,
            requester=interaction.user.display_name,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or job.channel_id,
            prompt=turn.prompt if turn else "",
            llm=job.llm,
            llm_params=job.llm_params,
            render_params=render_params,
            fresh_turn=False,
            turn_id=job.turn_id,
            layout_id=job.layout_id,
            count=count,
            base_job_id=base_job_id,
        )

    async def reroll(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        await self.require_layout(job, "render again")
        policy = await self.admit_interaction(interaction)
        params = enforce_limits(policy, job.render_params.replace(seed=new_seed()))
        request = await self.same_layout(interaction, job, params)
        await self.start_job(interaction, request, policy)

    async def show_layout(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        data = await self.storage.layout(job.layout_id) if job.layout_id is not None else None
        if data is None:
            raise OmostError(f"job #{job.id} has no layout yet", parameter="job", value=job.id)
        layout = Layout.loads(data, max_bytes=STORED_LAYOUT_BYTES)
        lines = [f"**Job #{job.id}** — {len(layout.regions)} region(s)"]
        for index, condition in enumerate(layout.conditions):
            top, bottom, left, right = condition.rect
            name = "global" if index == 0 else f"region {index}"
            lines.append(
                f"`{name}` rows {top}-{bottom}, columns {left}-{right}: "
                f"{formatting.shorten(' '.join(condition.prefixes), 120)}"
            )
        files = [
            discord.File(io.BytesIO(png_bytes(sketch_image(layout, (360, 360)))), filename="sketch.png"),
            discord.File(io.BytesIO(png_bytes(masks_image(layout))), filename="masks.png"),
            discord.File(io.BytesIO(data.encode("utf-8")), filename="layout.json"),
        ]
        await interaction.response.send_message("\n".join(lines)[:1990], files=files, ephemeral=True)

    async def open_edit(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        await interaction.response.send_modal(EditModal(job.id, self.edit_submitted))

    async def delete_result(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        if not self._may_manage(interaction, job):
            raise OmostError(
                "only the person who asked for this image, or an admin, can delete it", parameter="delete"
            )
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:
            with contextlib.suppress(discord.NotFound):  # deleted already
                await interaction.message.delete()
        await self.storage.update_job(job.id, result_message_id=None)
        await self.storage.drop_images(job.id)  # a deleted picture is not kept for picks and upscales either
        await interaction.followup.send(f"🗑️ Deleted the result of job #{job.id}.", ephemeral=True)

    async def cancel(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        if not self._may_manage(interaction, job):
            raise OmostError(
                "you can cancel only your own jobs (admins can cancel any)", parameter="job", value=job.id
            )
        if not await self.jobs.cancel(job.id):
            raise OmostError(
                f"job #{job.id} is not queued or running any more", parameter="job", value=job.id
            )
        await interaction.response.send_message(f"✖️ Cancelling job #{job.id}.", ephemeral=True)

    async def edit_submitted(self, interaction: discord.Interaction[Any], job_id: int, text: str) -> None:
        try:
            job = await self._job(job_id)
            prompt = self.check_prompt(text)
            policy = await self.admit_interaction(interaction)
            request = self._refine_request(
                job,
                prompt,
                policy,
                user=interaction.user,
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id or job.channel_id,
            )
            await self.start_job(interaction, request, policy)
        except OmostError as exc:
            await send_error(interaction, str(exc))
