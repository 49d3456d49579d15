"""A job's messages on Discord: the edit-fallback chain (interaction token -> channel edit -> new message)
and the progress edits, best effort within one bot-wide budget, never in the way of a result.

It needs only the few Discord client calls in ``DiscordClient`` (``OmostBot`` is one), never the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import discord

from bot import formatting
from bot.presenter import MessageKwargs, Tracker
from bot.views import custom_id

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's limit for servers without boosts
TOKEN_EXPIRED = 10015  # Unknown Webhook: the interaction token is older than 15 minutes
# A progress edit still unanswered after this long is abandoned (discord.py would go on retrying a 5xx for
# 25 s); the message shows the latest state on a later attempt. Results and errors are never abandoned.
PROGRESS_EDIT_TIMEOUT_S = 5.0


class DiscordClient(Protocol):
    """The Discord calls the messenger makes (a ``discord.Client`` has them)."""

    @property
    def user(self) -> discord.ClientUser | None: ...

    def get_guild(self, id: int, /) -> discord.Guild | None: ...

    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...


class EditBudget:
    """A token bucket: progress edits of all status messages together, ``per_second`` on average."""

    def __init__(self, per_second: float, clock: Callable[[], float]) -> None:
        self.per_second = per_second
        self.burst = max(1.0, 2 * per_second)  # two seconds' worth may go at once
        self.tokens = self.burst
        self.at = clock()

    def take(self, now: float) -> bool:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def ready_at(self) -> float:
        """When the next edit may go."""
        return self.at + max(0.0, 1.0 - self.tokens) / self.per_second


class Messenger:
    """Sends and edits jobs' status and result messages.

    Progress edits: each status message has at most one in flight; newer states meanwhile only mark it
    dirty, and the edit that follows shows the latest state (coalesced). Edits wait for ``interval_s``
    since the message's last edit (stage changes do not) and for a token of the bot-wide
    ``edits_per_s`` budget, running jobs first, then waiting jobs by position. A progress edit that fails
    or times out is dropped (the message stays dirty); delivering a result or an error cancels the
    message's progress edit instead of waiting for it.
    """

    def __init__(
        self,
        client: DiscordClient,
        *,
        progress: Callable[[Tracker], MessageKwargs],
        interval_s: float,
        edits_per_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.progress = progress  # the progress edit of a status message (StatusPresenter.progress_kwargs)
        self.interval_s = interval_s
        self.clock = clock
        # Status messages behind their job's state, best first: running jobs, then waiting ones by position.
        # (rank, position, job id, tracker); stale entries (the tracker's edit_key differs) are skipped.
        self._edits: list[tuple[int, int, int, Tracker]] = []
        self._budget = EditBudget(edits_per_s, clock)
        self.flush_at = math.inf  # the earliest time a held-back edit may go
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- progress edits ------------------------------------------------------------------------------------

    def request_edit(self, tracker: Tracker, *, urgent: bool = False) -> None:
        if tracker.phase == "done":
            return
        tracker.dirty = True
        tracker.urgent = tracker.urgent or urgent
        self.queue_edit(tracker)
        self.pump_edits()

    def queue_edit(self, tracker: Tracker) -> None:
        key = (0, 0) if tracker.phase in ("llm", "render") else (1, tracker.position)
        if tracker.edit_key != key:
            tracker.edit_key = key
            heapq.heappush(self._edits, (*key, tracker.job_id, tracker))

    def flush_due(self) -> None:
        """Send the edits held back by the throttle or the budget once they may go (called on each event:
        the running job reports often)."""
        if self._edits and self.clock() >= self.flush_at:
            self.pump_edits()

    def pump_edits(self) -> None:
        """Start the progress edits that may go now, best first."""
        now = self.clock()
        self.flush_at = math.inf
        held_back: list[tuple[int, int, int, Tracker]] = []
        while self._edits:
            entry = self._edits[0]
            tracker = entry[3]
            if tracker.edit_key != entry[:2]:  # queued again under a new key
                heapq.heappop(self._edits)
                continue
            if (
                not tracker.dirty
                or tracker.phase == "done"
                or tracker.message_id is None
                or tracker.edit_task
            ):
                # Up to date, finished (or forgotten), or not shown yet (announce queues it again); or an edit
                # is in flight (queued again when it ends).
                heapq.heappop(self._edits)
                tracker.edit_key = None
                continue
            ready_at = now if tracker.urgent else tracker.last_edit + self.interval_s
            if ready_at > now:
                held_back.append(heapq.heappop(self._edits))
                self.flush_at = min(self.flush_at, ready_at)
                continue
            if not self._budget.take(now):
                self.flush_at = min(self.flush_at, self._budget.ready_at())
                break
            heapq.heappop(self._edits)
            tracker.edit_key = None
            self._start_edit(tracker, now)
        for entry in held_back:
            heapq.heappush(self._edits, entry)

    def _start_edit(self, tracker: Tracker, now: float) -> None:
        tracker.last_edit = now
        task = asyncio.ensure_future(self._logged_edit(tracker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        tracker.edit_task = task
        task.add_done_callback(lambda _: self._edit_ended(tracker))

    def _edit_ended(self, tracker: Tracker) -> None:
        tracker.edit_task = None
        if tracker.dirty and tracker.phase != "done":
            self.queue_edit(tracker)
            self.pump_edits()

    async def _logged_edit(self, tracker: Tracker) -> None:
        try:
            await self._progress_edit(tracker)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a status update failed")

    async def _progress_edit(self, tracker: Tracker) -> None:
        # The state is read when the task runs: events that came in since it was started are shown too.
        tracker.dirty = tracker.urgent = False
        tracker.last_edit = self.clock()
        had_preview = tracker.preview_regions
        make_kwargs = self.progress(tracker)
        try:
            shown = await asyncio.wait_for(
                self.edit(tracker, make_kwargs, final=False), PROGRESS_EDIT_TIMEOUT_S
            )
        except TimeoutError:
            log.warning(
                "job %s: a status edit took over %g s; dropped", tracker.job_id, PROGRESS_EDIT_TIMEOUT_S
            )
            shown = None
        if shown is None and tracker.phase != "done":  # not shown: a later edit brings the latest state
            tracker.dirty = True
            if tracker.preview_regions != had_preview:  # the preview it carried was not shown either
                tracker.preview_regions = 0

    async def stop_progress(self, tracker: Tracker) -> None:
        """No more progress edits of this job; one in flight is cancelled, not waited for (it may be stuck in
        discord.py's retries of a failing request)."""
        tracker.phase = "done"
        tracker.dirty = False
        task = tracker.edit_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def idle(self) -> bool:
        return not self._tasks

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- the fallback chain --------------------------------------------------------------------------------

    async def edit(self, tracker: Tracker, make_kwargs: MessageKwargs, *, final: bool) -> int | None:
        """Edit the status message: through the interaction token while it lives, else through the channel;
        a final edit of a vanished message becomes a new message. Returns the id of the message shown."""
        channel = self.client.get_partial_messageable(tracker.channel_id, guild_id=tracker.guild_id)
        if tracker.message_id is not None:
            interaction = tracker.interaction
            if interaction is not None and not interaction.is_expired():
                try:
                    await interaction.followup.edit_message(tracker.message_id, **make_kwargs())
                    return tracker.message_id
                except discord.NotFound as exc:
                    if exc.code != TOKEN_EXPIRED:
                        log.info("job %s: status message gone (%s)", tracker.job_id, exc)
                    tracker.interaction = None
                except discord.HTTPException as exc:
                    log.warning("job %s: editing through the interaction failed: %s", tracker.job_id, exc)
                    if not final:
                        return None
            try:
                await channel.get_partial_message(tracker.message_id).edit(**make_kwargs())
                return tracker.message_id
            except discord.HTTPException as exc:
                log.warning("job %s: editing the status message failed: %s", tracker.job_id, exc)
                if not final:
                    return None
        if not final:
            return None
        return await self._send_new(tracker, make_kwargs())

    async def _send_new(self, tracker: Tracker, kwargs: dict[str, Any]) -> int | None:
        # A new message: send() takes files, not attachments, and mentions the requester once (edits never
        # ping); only the requester may be pinged, whatever else the text echoes.
        kwargs["files"] = kwargs.pop("attachments", None) or None
        content = kwargs.get("content") or ""
        mention = f"<@{tracker.user_id}>"
        kwargs["content"] = content if mention in content else f"{mention} {content}".strip()
        channel = self.client.get_partial_messageable(tracker.channel_id, guild_id=tracker.guild_id)
        try:
            message = await channel.send(**kwargs, allowed_mentions=formatting.notify_only(tracker.user_id))
        except discord.HTTPException as exc:
            log.error("job %s: could not deliver to channel %s: %s", tracker.job_id, tracker.channel_id, exc)
            return None
        return message.id

    # -- what Discord knows --------------------------------------------------------------------------------

    def upload_limit(self, tracker: Tracker) -> int:
        """Bytes one upload may have here: the interaction says; else the guild's boost level; else the default."""
        if tracker.interaction is not None:
            return tracker.interaction.filesize_limit
        guild = self.client.get_guild(tracker.guild_id) if tracker.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    def requester_name(self, tracker: Tracker) -> str:
        """The requester's display name: stored with the job (it survives restarts); for jobs from before
        that, the cached member's name; else their id."""
        if tracker.requester:
            return tracker.requester
        guild = self.client.get_guild(tracker.guild_id) if tracker.guild_id else None
        member = guild.get_member(tracker.user_id) if guild is not None else None
        return member.display_name if member is not None else f"user {tracker.user_id}"

    async def find_result(
        self, job_id: int, *, channel_id: int, guild_id: int | None, status_message_id: int | None
    ) -> discord.Message | None:
        """The message showing a job's result, if one reached Discord: its status message, or else a message
        of ours after it (a result re-sent as a new message), carrying the job's result buttons.

        Raises ``discord.HTTPException`` when Discord cannot tell now."""
        channel = self.client.get_partial_messageable(channel_id, guild_id=guild_id)
        # Every result has Layout & masks (a single image and a grid alike); results from before grids had Reroll.
        wanted = {custom_id("layout", job_id), custom_id("reroll", job_id)}

        def shows_result(message: discord.Message) -> bool:
            return any(
                getattr(item, "custom_id", None) in wanted
                for row in message.components
                for item in getattr(row, "children", ())
            )

        if status_message_id is not None:
            with contextlib.suppress(discord.NotFound):
                status = await channel.fetch_message(status_message_id)
                if shows_result(status):
                    return status
        after = discord.Object(status_message_id) if status_message_id else None
        me = self.client.user
        async for message in channel.history(limit=50, after=after):
            if me is not None and message.author.id == me.id and shows_result(message):
                return message
        return None

    async def report_failure(
        self,
        *,
        job_id: int,
        user_id: int,
        channel_id: int,
        guild_id: int | None,
        status_message_id: int | None,
        error: str,
    ) -> None:
        """A job from before a restart failed: its status message says so, and its user is told in a reply."""
        channel = self.client.get_partial_messageable(channel_id, guild_id=guild_id)
        reference = (
            discord.MessageReference(
                message_id=status_message_id, channel_id=channel_id, fail_if_not_exists=False
            )
            if status_message_id
            else None
        )
        try:
            if status_message_id:
                await channel.get_partial_message(status_message_id).edit(
                    content=f"❌ Job #{job_id} failed: {error}.", embed=None, attachments=[], view=None
                )
            await channel.send(
                f"⚠️ <@{user_id}>, job #{job_id} failed: {error}. Run it again (for a reply, reply again).",
                # discord.utils.MISSING is send's own default (no reply); its type does not admit None
                reference=reference if reference is not None else discord.utils.MISSING,
                allowed_mentions=formatting.notify_only(user_id),
            )
        except discord.HTTPException as exc:
            log.warning("job %s: could not report the failure: %s", job_id, exc)
