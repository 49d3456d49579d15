"""The bot's side of the job queue: stores jobs, feeds the backend, keeps each job's status message
up to date and delivers results, also after the 15-minute interaction token expired or a restart."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
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
    internal_failure,
)
from bot.storage import JobKind, JobRecord, Storage
from bot.views import custom_id, result_view, status_view
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.reply import extract_code

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
STORED_LAYOUT_BYTES = 64 * 1024 * 1024  # layouts in the database were checked on the way in (plus our record)


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
    requeued_attempt: int | None = None  # set when a lost worker (or a restart) sent the job back to the queue
    requeued_after_restart: bool = False  # the bot restarted while the job ran (not a lost worker)
    result_message_id: int | None = None  # set once Discord accepted the result: never overwrite it
    # Progress edits (best effort): the status message is behind the job's state (``dirty``), a stage change
    # is waiting (``urgent``: not held back by status_interval_s), the one edit of it in flight, and the key
    # under which it waits in JobService's queue of edits.
    dirty: bool = False
    urgent: bool = False
    edit_task: asyncio.Task[None] | None = None
    edit_key: tuple[int, int] | None = None


@contextlib.contextmanager
def _logged(action: str) -> Iterator[None]:
    """Log (with the traceback) and swallow an exception: for cleanup steps that must not stop the next."""
    try:
        yield
    except Exception:
        log.exception("%s failed", action)


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
        self.shutting_down = False  # set by the bot's close(): a job stopped now resumes after the restart
        self._cancel_requested: set[int] = set()  # cancelled by a user or admin, not by a shutdown

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
            requester=request.requester,
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
        self._cancel_requested.add(job_id)
        if await self.backend.cancel(job_id):
            return True
        self._cancel_requested.discard(job_id)
        return False

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
                layout=Layout.loads(data, max_bytes=STORED_LAYOUT_BYTES),
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
            tracker.requeued_after_restart = False
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
            self._spawn(self._store_chat(tracker, event), fails=(tracker.job_id, "the LLM's answer could not be stored"))
        elif isinstance(event, Finished):
            tracker.phase = "done"  # from now on only the result is shown: no progress edit starts
            self._spawn(self._deliver(tracker, event.output), fails=(tracker.job_id, "the result could not be delivered"))
        elif isinstance(event, Cancelled) and self.shutting_down and event.job_id not in self._cancel_requested:
            # Stopped by the shutdown, not by its user: the database keeps it running, and the next start
            # resumes it (recover); its status message is edited then.
            log.info("job %s: stopped by the shutdown; it resumes after the restart", event.job_id)
            tracker.phase = "done"
            self.trackers.pop(event.job_id, None)
        elif isinstance(event, Failed | Cancelled):
            tracker.phase = "done"
            self._cancel_requested.discard(event.job_id)
            self._spawn(self._end(tracker, event), fails=(tracker.job_id, "the job could not be ended cleanly"))

    def _spawn(self, coro: Awaitable[None], *, fails: tuple[int, str] | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task whose exception is never dropped: it is logged, and with ``fails`` (job id,
        what went wrong) the job is failed and its user told. Without it (status edits) logging is enough."""
        task = asyncio.ensure_future(self._guarded(coro, fails))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Awaitable[None], fails: tuple[int, str] | None) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            if fails is None:
                log.exception("a status update failed")
                return
            job_id, what = fails
            log.exception("job %s: %s", job_id, what)
            await self._fail_after_error(job_id, what)

    async def _fail_after_error(self, job_id: int, what: str) -> None:
        """A job whose bookkeeping raised: stop it, record it failed and tell the user, each step on its own
        (the database may be what failed). A result already on screen is never overwritten."""
        tracker = self.trackers.pop(job_id, None)
        if tracker is not None and tracker.result_message_id is not None:
            with _logged(f"job {job_id}: recording the delivered result"):
                await self.storage.update_job(job_id, state="done", result_message_id=tracker.result_message_id)
            return
        with _logged(f"job {job_id}: stopping it"):
            await self.backend.cancel(job_id)
        text = f"❌ Job #{job_id} failed: {internal_failure(job_id, what)}."
        with _logged(f"job {job_id}: recording the failure"):
            await self.storage.update_job(job_id, state="failed", error=what)
        if tracker is not None:
            tracker.phase = "done"
            with _logged(f"job {job_id}: reporting the failure"):
                await self._edit(
                    tracker, lambda: {"content": text, "embed": None, "attachments": [], "view": None}, final=True
                )

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
            text += "\n" + formatting.requeued_note(
                tracker.requeued_attempt,
                waiting=tracker.phase == "queued",
                after_restart=tracker.requeued_after_restart,
            )
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
            if progress is not None and tracker.render_started is not None:
                # Over the whole render (base and high-res steps), not this pass alone.
                eta = progress.seconds_left(self.clock() - tracker.render_started)
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
        # A new message: send() takes files, not attachments, and mentions the requester once (edits never
        # ping); only the requester may be pinged, whatever else the text echoes.
        kwargs["files"] = kwargs.pop("attachments", None) or None
        content = kwargs.get("content") or ""
        mention = f"<@{tracker.user_id}>"
        kwargs["content"] = content if mention in content else f"{mention} {content}".strip()
        try:
            message = await channel.send(**kwargs, allowed_mentions=formatting.notify_only(tracker.user_id))
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

    def _requester_name(self, tracker: Tracker) -> str:
        """The requester's display name: stored with the job (it survives restarts); for jobs from before
        that, the cached member's name; else their id."""
        if tracker.requester:
            return tracker.requester
        guild = self.bot.get_guild(tracker.guild_id) if tracker.guild_id else None
        member = guild.get_member(tracker.user_id) if guild is not None else None
        return member.display_name if member is not None else f"user {tracker.user_id}"

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
            layout_file = result_layout(output, job_id=tracker.job_id, prompt=tracker.prompt).dumps().encode("utf-8")
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
                requester=self._requester_name(tracker),
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

            # The intent first: a crash after Discord accepted the result but before "done" is recorded leaves a
            # running job with this set, and recovery then looks at Discord before touching the job.
            await self.storage.update_job(tracker.job_id, delivery_started_at=self.storage.clock())
            message_id = await self._edit(tracker, result_kwargs, final=True)
            tracker.result_message_id = message_id
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
        """After a start: resume the jobs a crash stopped, queue again the ones still waiting.
        Returns (failed, queued again).

        A job that was running resumes at the front of the line as its next attempt, up to
        ``config.max_attempts`` runs in all; then it fails with its job id. One whose result Discord may
        have accepted before the crash (delivery intent recorded) is looked up first: a result on screen
        is recorded as done and never touched. Jobs a backend still holds (Redis workers run on while the
        bot restarts) are tracked again, and the backend is told to deliver their events once that is done.
        """
        held_jobs = getattr(self.backend, "held_jobs", None)
        held = {ticket.job_id for ticket in await held_jobs()} if held_jobs is not None else set()
        running = await self.storage.jobs_in_state("running")
        for job in running:
            if job.id in held:
                await self._track_again(job, phase="llm")
        resumed: list[int] = []
        failed = 0
        for job in running:
            if job.id in held or await self._delivered_before_crash(job):
                continue
            if job.attempt >= self.config.max_attempts:
                await self._give_up(job)
                failed += 1
            else:
                await self.storage.update_job(
                    job.id, state="queued", attempt=job.attempt + 1, delivery_started_at=None
                )
                resumed.append(job.id)
        deliver_held = getattr(self.backend, "deliver_held", None)
        if deliver_held is not None:
            deliver_held()
        waiting = await self.storage.jobs_in_state("queued")
        # The resumed ones first: they had their turn already and keep it.
        waiting.sort(key=lambda job: (job.id not in resumed, job.id))
        requeued = 0
        for job in waiting:
            tracker = await self._track_again(job, phase="queued")
            if job.id in resumed:
                tracker.requeued_attempt, tracker.requeued_after_restart = job.attempt, True
            try:
                await self.backend.submit(Ticket(job_id=job.id, user_id=job.user_id))
                requeued += 1
            except QueueFullError as exc:
                self.trackers.pop(job.id, None)
                await self.storage.update_job(job.id, state="failed", error=str(exc))
                failed += 1
                continue
            if job.id in resumed:  # the status message says so at once, not at the next progress report
                self._request_edit(tracker, urgent=True)
        return failed, requeued

    async def _delivered_before_crash(self, job: JobRecord) -> bool:
        """Whether a running job's result reached Discord before the crash (then it is recorded as done).

        Only a job whose delivery had started can have one: its status message, or else a message of ours
        after it (a result re-sent as a new message), carries the job's result buttons.
        """
        if job.delivery_started_at is None:
            return False
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        wanted = custom_id("reroll", job.id)

        def shows_result(message: discord.Message) -> bool:
            return any(
                getattr(item, "custom_id", None) == wanted
                for row in message.components
                for item in getattr(row, "children", ())
            )

        found: discord.Message | None = None
        try:
            if job.status_message_id is not None:
                with contextlib.suppress(discord.NotFound):
                    status = await channel.fetch_message(job.status_message_id)
                    found = status if shows_result(status) else None
            if found is None:
                after = discord.Object(job.status_message_id) if job.status_message_id else None
                async for message in channel.history(limit=50, after=after):
                    if self.bot.user is not None and message.author.id == self.bot.user.id and shows_result(message):
                        found = message
                        break
        except discord.HTTPException as exc:  # Discord cannot tell now: run it again rather than lose it
            log.warning("job %s: could not check for a delivered result: %s", job.id, exc)
            return False
        if found is None:
            return False
        log.info("job %s: its result was delivered before the restart (message %s)", job.id, found.id)
        await self.storage.update_job(job.id, state="done", result_message_id=found.id)
        return True

    async def _give_up(self, job: JobRecord) -> None:
        """A job the bot was running at ``max_attempts`` crashes: failed, and its user told, with the job id."""
        runs = f"{job.attempt} time{'s' if job.attempt != 1 else ''}"
        error = f"the bot restarted while it ran, {runs}; it was not run again"
        await self.storage.update_job(job.id, state="failed", error=error)
        log.warning("job %s: %s", job.id, error)
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
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
                    content=f"❌ Job #{job.id} failed: {error}.", embed=None, attachments=[], view=None
                )
            await channel.send(
                f"⚠️ <@{job.user_id}>, job #{job.id} failed: {error}. Run it again (for a reply, reply again).",
                reference=reference,
                allowed_mentions=formatting.notify_only(job.user_id),
            )
        except discord.HTTPException as exc:
            log.warning("job %s: could not report the failure: %s", job.id, exc)

    async def _track_again(self, job: JobRecord, *, phase: str) -> Tracker:
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
            requester=job.requester,
        )
        tracker.attached.set()
        self.trackers[job.id] = tracker
        return tracker


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
    return Layout.loads(data, max_bytes=max_bytes)


def params_from_layout(layout: Layout, base: RenderParams) -> RenderParams:
    """The render parameters a layout file carries (validated by the loader), over ``base``."""
    return base.replace(**layout.render_settings)


def result_layout(output: JobOutput, *, job_id: int, prompt: str) -> Layout:
    """The layout file attached to a result: everything that reproduces it (docs/canvas.md)."""
    render = output.render
    meta: dict[str, Any] = {"job": job_id, "prompt": prompt, "render": render.params.to_dict(), "sdxl": render.model,
                            "seconds": round(render.seconds + (output.chat.seconds if output.chat else 0.0), 3)}
    layout = output.layout
    overrides = list(layout.meta.get("overrides") or [])
    if output.chat is not None:
        meta["llm"] = output.chat.model
        meta["program"] = extract_code(output.chat.reply)
    elif layout.meta.get("sdxl") and layout.meta.get("sdxl") != render.model:  # a file made elsewhere
        overrides.append(f"sdxl: {layout.meta['sdxl']!r} -> {render.model!r} (this bot's model)")
    meta["overrides"] = overrides
    return layout.with_meta(**meta)


def describe_layout(layout: Layout) -> str:
    """A prompt-like title for a layout render: its global description."""
    prefixes = layout.conditions[0].prefixes
    text = prefixes[0] if prefixes else ""
    prompt = layout.meta.get("prompt")
    return (prompt if isinstance(prompt, str) and prompt else text or "layout file")[:2000]
