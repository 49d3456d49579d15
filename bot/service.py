"""The bot's side of the job queue: stores jobs, feeds the backend, keeps each job's status message
up to date and delivers results, also after the 15-minute interaction token expired or a restart."""

from __future__ import annotations

import asyncio
import heapq
import io
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import discord

from bot import formatting
from bot.config import BotConfig
from bot.jobs import (
    Cancelled,
    ChatDone,
    Failed,
    Finished,
    JobBackend,
    JobEvent,
    JobOutput,
    JobSpec,
    Progress,
    Queued,
    QueueFullError,
    Requeued,
    Started,
    Ticket,
)
from bot.storage import JobKind, JobRecord, Storage
from bot.views import result_view, status_view
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import LLMProgress, RenderProgress

if TYPE_CHECKING:
    from bot.bot import OmostBot

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's limit for servers without boosts
UPLOAD_HEADROOM = 64 * 1024  # room for the layout file and the request's own bytes
TOKEN_EXPIRED = 10015  # Unknown Webhook: the interaction token is older than 15 minutes
ATTACH_TIMEOUT_S = 60.0  # a status message still unknown by then is given up on: results go to the channel
# A progress edit still unanswered after this long is abandoned (discord.py would go on retrying a 5xx for
# 25 s); the message shows the latest state on a later attempt. Results and errors are never abandoned.
PROGRESS_EDIT_TIMEOUT_S = 5.0


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """A validated request, ready to be stored and queued."""

    kind: JobKind
    user_id: int
    guild_id: int | None
    channel_id: int
    prompt: str  # the user's text; for a layout render a short description of the file
    llm: str | None
    llm_params: LLMParams
    render_params: RenderParams
    parent_turn_id: int | None = None  # continue (or branch) from this turn; None: the channel's conversation
    fresh_turn: bool = True  # False: reuse turn_id and layout_id (a reroll)
    turn_id: int | None = None
    layout_json: str | None = None  # a render job's layout (Layout.dumps())
    layout_id: int | None = None
    requester: str = ""  # display name for the result embed


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
    requeued_attempt: int | None = None  # set when a lost worker sent the job back to the queue
    # Progress edits (best effort): the status message is behind the job's state (``dirty``), a stage change
    # is waiting (``urgent``: not held back by status_interval_s), the one edit of it in flight, and the key
    # under which it waits in JobService's queue of edits.
    dirty: bool = False
    urgent: bool = False
    edit_task: asyncio.Task[None] | None = None
    edit_key: tuple[int, int] | None = None


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


class JobService:
    """Implements ``JobHandler`` for a ``JobBackend``; all Discord output of a job goes through here."""

    def __init__(
        self,
        bot: OmostBot,
        *,
        storage: Storage,
        backend: JobBackend,
        config: BotConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bot = bot
        self.storage = storage
        self.backend = backend
        self.config = config
        self.clock = clock
        self.trackers: dict[int, Tracker] = {}
        # Status messages behind their job's state, best first: running jobs, then waiting ones by position.
        # (rank, position, job id); stale entries (the tracker's edit_key differs) are skipped.
        self._edits: list[tuple[int, int, int]] = []
        self._budget = EditBudget(config.status_edits_per_s, clock)
        self._flush_at = math.inf  # the earliest time a held-back edit may go
        self._tasks: set[asyncio.Task[Any]] = set()
        self.delivered = 0  # results delivered since start (benchmarks, health)

    # -- submitting ------------------------------------------------------------------------------------

    async def enqueue(self, request: JobRequest, *, user_cap: int | None) -> tuple[int, int]:
        """Store and queue a request; returns (job id, queue position). On a full queue nothing stays stored."""
        turn_id, layout_id = request.turn_id, request.layout_id
        created: dict[str, int] = {}  # rows made for this request, removed again if the queue refuses it
        if request.fresh_turn:
            if request.layout_json is not None:
                layout_id = created["layouts"] = await self.storage.add_layout(request.layout_json)
            if request.parent_turn_id is not None:
                parent = await self.storage.turn(request.parent_turn_id)
                assert parent is not None
                conversation_id = parent.conversation_id
            elif request.kind == "render":  # a layout file starts its own conversation, not the channel's
                conversation_id = await self.storage.new_conversation(
                    guild_id=request.guild_id, channel_id=request.channel_id, user_id=request.user_id
                )
            else:
                conversation_id = await self.storage.current_conversation(
                    guild_id=request.guild_id, channel_id=request.channel_id, user_id=request.user_id
                )
                head = await self.storage.head_turn(conversation_id)
                request = replace(request, parent_turn_id=head.id if head else None)
            turn_id = await self.storage.add_turn(
                conversation_id=conversation_id,
                parent_id=request.parent_turn_id,
                user_id=request.user_id,
                prompt=request.prompt,
                layout_id=layout_id if request.kind == "render" else None,
            )
            created["turns"] = turn_id
            created["conversations"] = conversation_id
        assert turn_id is not None
        job_id = await self.storage.create_job(
            kind=request.kind,
            user_id=request.user_id,
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            turn_id=turn_id,
            llm=request.llm,
            llm_params=request.llm_params,
            render_params=request.render_params,
            layout_id=layout_id,
        )
        self.trackers[job_id] = Tracker(
            job_id=job_id,
            user_id=request.user_id,
            channel_id=request.channel_id,
            guild_id=request.guild_id,
            turn_id=turn_id,
            prompt=request.prompt,
            requester=request.requester,
        )
        try:
            position = await self.backend.submit(
                Ticket(job_id=job_id, user_id=request.user_id), user_cap=user_cap
            )
        except QueueFullError:
            self.trackers.pop(job_id, None)
            await self._discard(job_id, created)
            raise
        return job_id, position

    async def _discard(self, job_id: int, created: dict[str, int]) -> None:
        async with self.storage.db.transaction() as tx:
            await tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            if "turns" in created:
                await tx.execute("DELETE FROM turns WHERE id = ?", (created["turns"],))
            if "layouts" in created:
                await tx.execute("DELETE FROM layouts WHERE id = ?", (created["layouts"],))
            if "conversations" in created:  # only if this request's turn was its first
                conversation = created["conversations"]
                empty = "NOT EXISTS (SELECT 1 FROM turns WHERE conversation_id = ?)"
                await tx.execute(
                    f"DELETE FROM current_conversations WHERE conversation_id = ? AND {empty}",
                    (conversation, conversation),
                )
                await tx.execute(
                    f"DELETE FROM conversations WHERE id = ? AND {empty}", (conversation, conversation)
                )

    async def announce(
        self,
        job_id: int,
        position: int,
        send: Callable[..., Awaitable[discord.Message | None]],
        *,
        interaction: discord.Interaction[Any] | None = None,
    ) -> discord.Message | None:
        """Send the job's status message with ``send(content, view=...)`` and remember it.

        If sending fails the job still runs; its result then goes to the channel as a new message.
        """
        tracker = self.trackers.get(job_id)
        message: discord.Message | None = None
        try:
            message = await send(formatting.queued_text(job_id, position), view=status_view(job_id))
        except discord.HTTPException as exc:
            log.warning("job %s: could not send its status message: %s", job_id, exc)
        if tracker is None:  # finished already (an instant engine)
            return message
        tracker.interaction = interaction
        tracker.message_id = message.id if message is not None else None
        tracker.last_edit = self.clock()
        if message is not None:
            await self.storage.update_job(job_id, status_message_id=message.id)
        tracker.attached.set()
        if tracker.dirty:  # the job moved while its status message was on its way
            self._queue_edit(tracker)
            self._pump_edits()
        return message

    async def cancel(self, job_id: int) -> bool:
        return await self.backend.cancel(job_id)

    # -- JobHandler --------------------------------------------------------------------------------------

    async def prepare(self, job_id: int) -> JobSpec | None:
        job = await self.storage.job(job_id)
        if job is None or job.state != "queued":
            return None
        turn = await self.storage.turn(job.turn_id)
        assert turn is not None
        await self.storage.update_job(job_id, state="running")
        if job.kind == "render":
            assert job.layout_id is not None
            data = await self.storage.layout(job.layout_id)
            assert data is not None
            return JobSpec(
                job_id=job_id,
                prompt=turn.prompt,
                history=(),
                llm=None,
                llm_params=job.llm_params,
                render_params=job.render_params,
                layout=Layout.loads(data),
                sdxl=self.config.sdxl,
            )
        history = await self.storage.history(turn.parent_id)
        return JobSpec(
            job_id=job_id,
            prompt=turn.prompt,
            history=history,
            llm=job.llm,
            llm_params=job.llm_params,
            render_params=job.render_params,
            sdxl=self.config.sdxl,
        )

    def on_event(self, event: JobEvent) -> None:
        tracker = self.trackers.get(event.job_id)
        if tracker is not None:
            self._apply(tracker, event)
        # Edits held back by the throttle or the budget go out on a later event (the running job reports often).
        if self._edits and self.clock() >= self._flush_at:
            self._pump_edits()

    def _apply(self, tracker: Tracker, event: JobEvent) -> None:
        if isinstance(event, Queued):
            tracker.position = event.position
            self._request_edit(tracker)
        elif isinstance(event, Requeued):
            tracker.phase, tracker.position, tracker.requeued_attempt = "queued", 1, event.attempt
            tracker.llm_progress = tracker.render_progress = tracker.render_started = None
            tracker.preview_regions = 0
            self._request_edit(tracker, urgent=True)
        elif isinstance(event, Started):
            tracker.phase = event.stage
            if event.stage == "render":
                tracker.render_started = self.clock()
            self._request_edit(tracker, urgent=True)
        elif isinstance(event, Progress):
            if isinstance(event.progress, LLMProgress):
                tracker.llm_progress = event.progress
            else:
                tracker.render_progress = event.progress
            self._request_edit(tracker)
        elif isinstance(event, ChatDone):
            self._spawn(self._store_chat(tracker, event))
        elif isinstance(event, Finished):
            tracker.phase = "done"  # from now on only the result is shown: no progress edit starts
            self._spawn(self._deliver(tracker, event.output))
        elif isinstance(event, Failed | Cancelled):
            tracker.phase = "done"
            self._spawn(self._end(tracker, event))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def idle(self) -> bool:
        """No status edit, store or delivery in flight."""
        return not self._tasks

    async def drain(self) -> None:
        """Wait for every pending status edit and delivery (shutdown, tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- status message ----------------------------------------------------------------------------------

    def _status(self, tracker: Tracker) -> tuple[str, discord.File | None]:
        text, preview = self._phase_status(tracker)
        if tracker.requeued_attempt is not None:  # the user keeps seeing that this is a retry
            text += "\n" + formatting.requeued_note(tracker.requeued_attempt, waiting=tracker.phase == "queued")
        return text, preview

    def _phase_status(self, tracker: Tracker) -> tuple[str, discord.File | None]:
        if tracker.phase == "llm":
            progress = tracker.llm_progress
            text = formatting.llm_text(tracker.job_id, progress)
            regions = len(progress.conditions) if progress else 0
            if progress is not None and regions and regions != tracker.preview_regions:
                tracker.preview_regions = regions
                png = formatting.png_bytes(formatting.preview_image(progress.conditions))
                return text, discord.File(io.BytesIO(png), filename="preview.png")
            return text, None
        if tracker.phase == "render":
            progress = tracker.render_progress
            eta = None
            if progress is not None and tracker.render_started is not None and progress.step:
                elapsed = self.clock() - tracker.render_started
                eta = elapsed / progress.step * (progress.total - progress.step)
            return formatting.render_text(tracker.job_id, progress, eta), None
        return formatting.queued_text(tracker.job_id, tracker.position), None

    # -- progress edits: best effort, within one bot-wide budget, never in the way of a result -------------
    #
    # Each status message has at most one progress edit in flight; newer states meanwhile only mark it
    # dirty, and the edit that follows shows the latest state (coalesced). Edits wait for
    # ``status_interval_s`` since the message's last edit (stage changes do not) and for a token of the
    # bot-wide ``status_edits_per_s`` budget, running jobs first, then waiting jobs by position. A progress
    # edit that fails or times out is dropped (the message stays dirty); delivering a result or an error
    # cancels the message's progress edit instead of waiting for it.

    def _request_edit(self, tracker: Tracker, *, urgent: bool = False) -> None:
        if tracker.phase == "done":
            return
        tracker.dirty = True
        tracker.urgent = tracker.urgent or urgent
        self._queue_edit(tracker)
        self._pump_edits()

    def _queue_edit(self, tracker: Tracker) -> None:
        key = (0, 0) if tracker.phase in ("llm", "render") else (1, tracker.position)
        if tracker.edit_key != key:
            tracker.edit_key = key
            heapq.heappush(self._edits, (*key, tracker.job_id))

    def _pump_edits(self) -> None:
        """Start the progress edits that may go now, best first."""
        now = self.clock()
        self._flush_at = math.inf
        held_back: list[tuple[int, int, int]] = []
        while self._edits:
            entry = self._edits[0]
            tracker = self.trackers.get(entry[2])
            if tracker is None or tracker.edit_key != entry[:2]:  # gone, or queued again under a new key
                heapq.heappop(self._edits)
                continue
            if not tracker.dirty or tracker.phase == "done" or tracker.message_id is None or tracker.edit_task:
                # Up to date, finished, or not shown yet (announce queues it again); or an edit is in flight
                # (queued again when it ends).
                heapq.heappop(self._edits)
                tracker.edit_key = None
                continue
            ready_at = now if tracker.urgent else tracker.last_edit + self.config.status_interval_s
            if ready_at > now:
                held_back.append(heapq.heappop(self._edits))
                self._flush_at = min(self._flush_at, ready_at)
                continue
            if not self._budget.take(now):
                self._flush_at = min(self._flush_at, self._budget.ready_at())
                break
            heapq.heappop(self._edits)
            tracker.edit_key = None
            self._start_edit(tracker, now)
        for entry in held_back:
            heapq.heappush(self._edits, entry)

    def _start_edit(self, tracker: Tracker, now: float) -> None:
        tracker.last_edit = now
        task = self._spawn(self._progress_edit(tracker))
        tracker.edit_task = task
        task.add_done_callback(lambda _: self._edit_ended(tracker))

    def _edit_ended(self, tracker: Tracker) -> None:
        tracker.edit_task = None
        if tracker.dirty and tracker.phase != "done" and tracker.job_id in self.trackers:
            self._queue_edit(tracker)
            self._pump_edits()

    async def _progress_edit(self, tracker: Tracker) -> None:
        # The state is read when the task runs: events that came in since it was started are shown too.
        tracker.dirty = tracker.urgent = False
        tracker.last_edit = self.clock()
        content, preview = self._status(tracker)

        def edit_kwargs() -> dict[str, Any]:
            if preview is None:
                return {"content": content}
            preview.reset()
            embed = discord.Embed(description="Layout so far").set_image(url="attachment://preview.png")
            return {"content": content, "embed": embed, "attachments": [preview]}

        try:
            shown = await asyncio.wait_for(self._edit(tracker, edit_kwargs, final=False), PROGRESS_EDIT_TIMEOUT_S)
        except TimeoutError:
            log.warning("job %s: a status edit took over %g s; dropped", tracker.job_id, PROGRESS_EDIT_TIMEOUT_S)
            shown = None
        if shown is None and tracker.phase != "done":  # not shown: a later edit brings the latest state
            tracker.dirty = True
            if preview is not None:
                tracker.preview_regions = 0

    async def _stop_progress(self, tracker: Tracker) -> None:
        """No more progress edits of this job; one in flight is cancelled, not waited for (it may be stuck in
        discord.py's retries of a failing request)."""
        tracker.phase = "done"
        tracker.dirty = False
        task = tracker.edit_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _edit(
        self, tracker: Tracker, make_kwargs: Callable[[], dict[str, Any]], *, final: bool
    ) -> int | None:
        """Edit the status message: through the interaction token while it lives, else through the channel;
        a final edit of a vanished message becomes a new message. Returns the id of the message shown."""
        channel = self.bot.get_partial_messageable(tracker.channel_id, guild_id=tracker.guild_id)
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
        kwargs = make_kwargs()
        # A new message: send() takes files, not attachments, and mentions the requester (edits never ping).
        kwargs["files"] = kwargs.pop("attachments", None) or None
        kwargs["content"] = f"<@{tracker.user_id}> {kwargs.get('content') or ''}".strip()
        try:
            message = await channel.send(**kwargs, allowed_mentions=discord.AllowedMentions(users=True))
        except discord.HTTPException as exc:
            log.error("job %s: could not deliver to channel %s: %s", tracker.job_id, tracker.channel_id, exc)
            return None
        return message.id

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def _store_chat(self, tracker: Tracker, event: ChatDone) -> None:
        async with tracker.lock:
            layout_id = await self.storage.add_layout(event.result.layout.dumps())
            await self.storage.set_turn_reply(tracker.turn_id, reply=event.result.reply, layout_id=layout_id)
            await self.storage.update_job(tracker.job_id, layout_id=layout_id, llm_model=event.result.model)

    def upload_limit(self, tracker: Tracker) -> int:
        """Bytes one upload may have here: the interaction says; else the guild's boost level; else the default."""
        if tracker.interaction is not None:
            return tracker.interaction.filesize_limit
        guild = self.bot.get_guild(tracker.guild_id) if tracker.guild_id else None
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT

    async def _attached(self, tracker: Tracker) -> None:
        """Wait until the status message is known (it may still be on its way when a fast job ends)."""
        if tracker.attached.is_set():  # the usual case: no timer needed
            return
        try:
            await asyncio.wait_for(tracker.attached.wait(), ATTACH_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "job %s: no status message after %g s; delivering to the channel",
                tracker.job_id,
                ATTACH_TIMEOUT_S,
            )

    async def _deliver(self, tracker: Tracker, output: JobOutput) -> None:
        await self._stop_progress(tracker)
        await self._attached(tracker)
        async with tracker.lock:
            render = output.render
            layout_file = (
                output.layout.with_meta(
                    job=tracker.job_id,
                    prompt=tracker.prompt,
                    seed=render.params.seed,
                    render=render.params.to_dict(),
                    llm=output.chat.model if output.chat else None,
                    sdxl=render.model,
                )
                .dumps()
                .encode("utf-8")
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
                limit=max(self.upload_limit(tracker) - len(layout_file) - UPLOAD_HEADROOM, 64 * 1024),
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
                requester=tracker.requester or f"user {tracker.user_id}",
                notes=notes,
            )

            def result_kwargs() -> dict[str, Any]:
                return {
                    "content": f"✅ Done, <@{tracker.user_id}>.",
                    "embed": embed,
                    "view": result_view(tracker.job_id),
                    "attachments": [
                        discord.File(io.BytesIO(image.data), filename=image.filename),
                        discord.File(io.BytesIO(layout_file), filename="layout.json"),
                    ],
                }

            message_id = await self._edit(tracker, result_kwargs, final=True)
            await self.storage.update_job(
                tracker.job_id,
                state="done",
                result_message_id=message_id,
                render_model=render.model,
                render_params=render.params,
            )
            self.trackers.pop(tracker.job_id, None)
            self.delivered += 1

    async def _end(self, tracker: Tracker, event: Failed | Cancelled) -> None:
        await self._stop_progress(tracker)
        await self._attached(tracker)
        async with tracker.lock:
            if isinstance(event, Cancelled):
                state, error, text = "cancelled", None, f"✖️ Job #{tracker.job_id} was cancelled."
            else:
                state, error = "failed", event.message
                text = f"❌ Job #{tracker.job_id} failed: {event.message}"
            await self.storage.update_job(tracker.job_id, state=state, error=error)
            await self._edit(
                tracker, lambda: {"content": text, "embed": None, "attachments": [], "view": None}, final=True
            )
            self.trackers.pop(tracker.job_id, None)

    # -- restart -----------------------------------------------------------------------------------------

    async def recover(self) -> tuple[int, int]:
        """After a start: report jobs a crash interrupted, queue again the ones still waiting.
        Returns (interrupted, requeued).

        Jobs a backend still holds (Redis workers run on while the bot restarts) are not interrupted:
        they are tracked again, and the backend is told to deliver their events once that is done.
        """
        held_jobs = getattr(self.backend, "held_jobs", None)
        held = {ticket.job_id for ticket in await held_jobs()} if held_jobs is not None else set()
        running = await self.storage.jobs_in_state("running")
        for job in running:
            if job.id in held:
                await self._track_again(job, phase="llm")
        interrupted = [job for job in running if job.id not in held]
        for job in interrupted:
            await self.storage.update_job(job.id, state="interrupted", error="interrupted by a restart")
            channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            text = (
                f"⚠️ <@{job.user_id}>, job #{job.id} was interrupted when the bot restarted. "
                "Run it again (for a reply, reply again)."
            )
            reference = (
                discord.MessageReference(
                    message_id=job.status_message_id, channel_id=job.channel_id, fail_if_not_exists=False
                )
                if job.status_message_id
                else None
            )
            try:
                if job.status_message_id:
                    await channel.get_partial_message(job.status_message_id).edit(
                        content=f"⚠️ Job #{job.id} was interrupted by a restart.", view=None
                    )
                await channel.send(
                    text, reference=reference, allowed_mentions=discord.AllowedMentions(users=True)
                )
            except discord.HTTPException as exc:
                log.warning("job %s: could not report the interruption: %s", job.id, exc)
        deliver_held = getattr(self.backend, "deliver_held", None)
        if deliver_held is not None:
            deliver_held()
        waiting = await self.storage.jobs_in_state("queued")
        requeued = 0
        for job in waiting:
            await self._track_again(job, phase="queued")
            try:
                await self.backend.submit(Ticket(job_id=job.id, user_id=job.user_id))
                requeued += 1
            except QueueFullError as exc:
                self.trackers.pop(job.id, None)
                await self.storage.update_job(job.id, state="failed", error=str(exc))
        return len(interrupted), requeued

    async def _track_again(self, job: JobRecord, *, phase: str) -> None:
        """A tracker for a job from before a restart: no interaction any more, edits go through the channel."""
        turn = await self.storage.turn(job.turn_id)
        tracker = Tracker(
            job_id=job.id,
            user_id=job.user_id,
            channel_id=job.channel_id,
            guild_id=job.guild_id,
            turn_id=job.turn_id,
            prompt=turn.prompt if turn else "",
            message_id=job.status_message_id,
            phase=phase,
        )
        tracker.attached.set()
        self.trackers[job.id] = tracker


def check_layout_size(size: int, *, max_bytes: int) -> None:
    """OmostError for a layout file over the limit (callers check an attachment's size before downloading it)."""
    if size > max_bytes:
        raise OmostError(
            f"the layout file is {size} bytes; at most {max_bytes} bytes are allowed",
            parameter="layout",
            value=size,
            allowed=f"up to {max_bytes} bytes",
        )


def layout_from_upload(data: bytes, *, max_bytes: int) -> Layout:
    """A user's layout file: size-checked, then parsed (ComfyUI_omost lists too); OmostError if bad."""
    check_layout_size(len(data), max_bytes=max_bytes)
    return Layout.loads(data)


def params_from_layout(layout: Layout, base: RenderParams) -> RenderParams:
    """The render parameters a layout file carries in its meta (our own files), over ``base``."""
    stored = layout.meta.get("render")
    if not isinstance(stored, dict):
        return base
    try:
        return RenderParams.from_dict({**base.to_dict(), **stored})
    except (OmostError, TypeError) as exc:
        raise OmostError(f"the layout file's render settings are invalid: {exc}", parameter="layout") from exc


def describe_layout(layout: Layout) -> str:
    """A prompt-like title for a layout render: its global description."""
    prefixes = layout.conditions[0].prefixes
    text = prefixes[0] if prefixes else ""
    prompt = layout.meta.get("prompt")
    return (prompt if isinstance(prompt, str) and prompt else text or "layout file")[:2000]
