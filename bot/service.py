"""The bot's side of the job queue: it implements ``JobHandler`` for a ``JobBackend`` and turns each job's
events into its records and messages, also after the 15-minute interaction token expired or a restart.

It composes three parts, each with only what it uses: ``JobStore`` (storage and the backend),
``StatusPresenter`` (what the messages say) and ``Messenger`` (Discord: the edit-fallback chain and the
progress-edit budget). ``OmostBot`` wires them; nothing here knows the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import discord

from bot import formatting
from bot.events import JobUpdate, JobUpdates, Phase
from bot.job_store import JobRequest, JobStore, StoredJob
from bot.jobs import (
    Cancelled,
    ChatDone,
    Failed,
    Finished,
    JobEvent,
    JobOutput,
    JobSpec,
    Progress,
    Queued,
    QueueFullError,
    Requeued,
    Started,
    internal_failure,
)
from bot.messenger import Messenger
from bot.presenter import MessageKwargs, StatusPresenter, Tracker, end_text, plain_kwargs
from bot.recovery import Recovery
from bot.storage import JobRecord
from bot.views import status_view
from omost_engine.errors import OmostError
from omost_engine.progress import LLMProgress, RenderProgress

log = logging.getLogger(__name__)

ATTACH_TIMEOUT_S = 60.0  # a status message still unknown by then is given up on: results go to the channel

__all__ = ["ATTACH_TIMEOUT_S", "JobRequest", "JobService", "Tracker"]


def _tracker(request: JobRequest, stored: StoredJob) -> Tracker:
    """The tracker of a job just stored from ``request``."""
    return Tracker(
        job_id=stored.job_id,
        user_id=request.user_id,
        channel_id=request.channel_id,
        guild_id=request.guild_id,
        turn_id=stored.turn_id,
        prompt=request.prompt,
        requester=request.requester,
    )


@contextlib.contextmanager
def _logged(action: str) -> Iterator[None]:
    """Log (with the traceback) and swallow an exception: for cleanup steps that must not stop the next."""
    try:
        yield
    except Exception:
        log.exception("%s failed", action)


class JobService:
    """Implements ``JobHandler`` for a ``JobBackend``; all of a job's records and messages go through here."""

    def __init__(
        self,
        *,
        store: JobStore,
        presenter: StatusPresenter,
        messenger: Messenger,
        max_attempts: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.storage = store.storage
        self.backend = store.backend
        self.presenter = presenter
        self.messenger = messenger
        self.max_attempts = max_attempts
        self.clock = clock
        self.trackers: dict[int, Tracker] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.delivered = 0  # results delivered since start (benchmarks, health)
        self.shutting_down = False  # set by the bot's close(): a job stopped now resumes after the restart
        self._cancel_requested: set[int] = set()  # cancelled by a user or admin, not by a shutdown
        # Every recorded change of a job, for the cog (bot/events.py); the messages here never wait on it.
        self.events = JobUpdates()

    # -- submitting ------------------------------------------------------------------------------------

    async def enqueue(self, request: JobRequest, *, user_cap: int | None) -> tuple[int, int]:
        """Store and queue a request; returns (job id, queue position). On a full queue nothing stays stored."""
        stored = await self.store.create(request)
        # Tracked before it is queued: the backend may report on it at once.
        self.trackers[stored.job_id] = _tracker(request, stored)
        try:
            position = await self.store.submit(stored.job_id, request.user_id, user_cap=user_cap)
        except QueueFullError:
            self._forget(stored.job_id)
            await self.store.discard(stored)
            raise
        return stored.job_id, position

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
            self.messenger.queue_edit(tracker)
            self.messenger.pump_edits()
        return message

    async def post_result(
        self,
        request: JobRequest,
        output: JobOutput,
        send: Callable[[dict[str, Any]], Awaitable[discord.Message]],
        *,
        interaction: discord.Interaction[Any] | None = None,
    ) -> int:
        """A result that needs no render (an image picked from a grid, still kept): stored as a job of its
        own, posted with ``send(message kwargs)`` and recorded done; returns its job id.

        Until it is recorded done the job stays queued, so a crash in between renders it after the restart.
        """
        stored = await self.store.create(request)
        job_id = stored.job_id
        tracker = _tracker(request, stored)
        tracker.interaction = interaction
        try:
            result = await self._result_message(tracker, output)
            message = await send(result())
        except Exception:
            log.exception("job %s: the picked image could not be posted", job_id)
            what = "posting the picked image failed"
            await self.storage.update_job(job_id, state="failed", error=what)
            raise OmostError(internal_failure(job_id, what), parameter="job", value=job_id) from None
        await self._record_delivered(tracker, message.id, output, status_message_id=message.id)
        self._publish(tracker, "done", message_id=message.id)
        return job_id

    async def cancel(self, job_id: int) -> bool:
        self._cancel_requested.add(job_id)
        if await self.backend.cancel(job_id):
            return True
        self._cancel_requested.discard(job_id)
        return False

    def _forget(self, job_id: int) -> Tracker | None:
        """Stop tracking a job: no more progress edits of it."""
        tracker = self.trackers.pop(job_id, None)
        if tracker is not None and tracker.result_message_id is None:
            tracker.phase = "done"
        return tracker

    # -- JobHandler --------------------------------------------------------------------------------------

    async def prepare(self, job_id: int) -> JobSpec | None:
        return await self.store.prepare(job_id)

    def on_event(self, event: JobEvent) -> None:
        tracker = self.trackers.get(event.job_id)
        if tracker is not None:
            self._apply(tracker, event)
            if isinstance(event, Queued | Requeued | Started | Progress):
                self._publish(
                    tracker,
                    "render" if tracker.phase == "render" else "llm" if tracker.phase == "llm" else "queued",
                )
        self.messenger.flush_due()

    def _publish(
        self, tracker: Tracker, phase: Phase, *, message_id: int | None = None, error: str | None = None
    ) -> None:
        """Tell the listeners (the cog) what the job's records now say."""
        fraction = None
        progress = tracker.render_progress
        if phase == "render" and isinstance(progress, RenderProgress) and progress.steps_in_all > 0:
            fraction = min(1.0, progress.steps_done / progress.steps_in_all)
        self.events.publish(
            JobUpdate(
                job_id=tracker.job_id,
                user_id=tracker.user_id,
                channel_id=tracker.channel_id,
                guild_id=tracker.guild_id,
                phase=phase,
                position=tracker.position if phase == "queued" else 0,
                fraction=fraction,
                message_id=message_id if message_id is not None else tracker.message_id,
                error=error,
            )
        )

    def _apply(self, tracker: Tracker, event: JobEvent) -> None:
        edit = self.messenger.request_edit
        if isinstance(event, Queued):
            tracker.position = event.position
            edit(tracker)
        elif isinstance(event, Requeued):
            tracker.phase, tracker.position, tracker.requeued_attempt = "queued", 1, event.attempt
            tracker.requeued_after_restart = False
            tracker.llm_progress = tracker.render_progress = tracker.render_started = None
            tracker.preview_regions = 0
            edit(tracker, urgent=True)
        elif isinstance(event, Started):
            tracker.phase = event.stage
            if event.stage == "render":
                tracker.render_started = self.clock()
            edit(tracker, urgent=True)
        elif isinstance(event, Progress):
            if isinstance(event.progress, LLMProgress):
                tracker.llm_progress = event.progress
            else:
                tracker.render_progress = event.progress
            edit(tracker)
        else:
            self._apply_end(tracker, event)

    def _apply_end(self, tracker: Tracker, event: JobEvent) -> None:
        if isinstance(event, ChatDone):
            self._spawn(
                self._store_chat(tracker, event),
                fails=(tracker.job_id, "the LLM's answer could not be stored"),
            )
        elif isinstance(event, Finished):
            tracker.phase = "done"  # from now on only the result is shown: no progress edit starts
            self._spawn(
                self._deliver(tracker, event.output),
                fails=(tracker.job_id, "the result could not be delivered"),
            )
        elif (
            isinstance(event, Cancelled) and self.shutting_down and event.job_id not in self._cancel_requested
        ):
            # Stopped by the shutdown, not by its user: the database keeps it running, and the next start
            # resumes it (recover); its status message is edited then.
            log.info("job %s: stopped by the shutdown; it resumes after the restart", event.job_id)
            self._forget(event.job_id)
        elif isinstance(event, Failed | Cancelled):
            tracker.phase = "done"
            self._cancel_requested.discard(event.job_id)
            self._spawn(
                self._end(tracker, event), fails=(tracker.job_id, "the job could not be ended cleanly")
            )

    def _spawn(self, coro: Awaitable[None], *, fails: tuple[int, str]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task whose exception is never dropped: it is logged, and the job (``fails``: job
        id, what went wrong) is failed and its user told."""
        task = asyncio.ensure_future(self._guarded(coro, fails))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Awaitable[None], fails: tuple[int, str]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            job_id, what = fails
            log.exception("job %s: %s", job_id, what)
            await self._fail_after_error(job_id, what)

    async def _fail_after_error(self, job_id: int, what: str) -> None:
        """A job whose bookkeeping raised: stop it, record it failed and tell the user, each step on its own
        (the database may be what failed). A result already on screen is never overwritten."""
        tracker = self._forget(job_id)
        if tracker is not None and tracker.result_message_id is not None:
            with _logged(f"job {job_id}: recording the delivered result"):
                await self.storage.update_job(
                    job_id, state="done", result_message_id=tracker.result_message_id
                )
            return
        with _logged(f"job {job_id}: stopping it"):
            await self.backend.cancel(job_id)
        text = f"❌ Job #{job_id} failed: {internal_failure(job_id, what)}."
        with _logged(f"job {job_id}: recording the failure"):
            await self.storage.update_job(job_id, state="failed", error=what)
        if tracker is not None:
            with _logged(f"job {job_id}: reporting the failure"):
                await self.messenger.edit(tracker, plain_kwargs(text), final=True)
            self._publish(tracker, "failed", error=internal_failure(job_id, what))

    @property
    def idle(self) -> bool:
        """No status edit, store or delivery in flight."""
        return not self._tasks and self.messenger.idle

    async def drain(self) -> None:
        """Wait for every pending status edit and delivery (shutdown, tests, benchmarks)."""
        while not self.idle:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            await self.messenger.drain()

    def upload_limit(self, tracker: Tracker) -> int:
        return self.messenger.upload_limit(tracker)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def _store_chat(self, tracker: Tracker, event: ChatDone) -> None:
        async with tracker.lock:
            await self.store.store_chat(tracker.job_id, tracker.turn_id, event.result)

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
        await self.messenger.stop_progress(tracker)
        await self._attached(tracker)
        async with tracker.lock:
            result = await self._result_message(tracker, output)
            # The intent first: a crash after Discord accepted the result but before "done" is recorded leaves a
            # running job with this set, and recovery then looks at Discord before touching the job.
            await self.storage.update_job(tracker.job_id, delivery_started_at=self.storage.clock())
            message_id = await self.messenger.edit(tracker, result, final=True)
            tracker.result_message_id = message_id
            await self._record_delivered(tracker, message_id, output)
            self.trackers.pop(tracker.job_id, None)
        self._publish(tracker, "done", message_id=message_id)

    async def _result_message(self, tracker: Tracker, output: JobOutput) -> MessageKwargs:
        """The result message, with the images kept first: the result's pick and upscale buttons find them
        (a failure to keep them costs only a render later, when a pick or an upscale renders again)."""
        result = await self.presenter.result_kwargs(
            tracker,
            output,
            upload_limit=self.upload_limit(tracker),
            requester=self.messenger.requester_name(tracker),
        )
        with _logged(f"job {tracker.job_id}: keeping its images"):
            await self.store.keep_images(tracker.job_id, output.render)
        return result

    async def _record_delivered(
        self, tracker: Tracker, message_id: int | None, output: JobOutput, **more: Any
    ) -> None:
        await self.storage.update_job(
            tracker.job_id,
            state="done",
            result_message_id=message_id,
            render_model=output.render.model,
            render_params=output.render.params,
            **more,
        )
        self.delivered += 1

    async def _end(self, tracker: Tracker, event: Failed | Cancelled) -> None:
        await self.messenger.stop_progress(tracker)
        await self._attached(tracker)
        async with tracker.lock:
            state, error, text = end_text(tracker.job_id, event)
            await self.storage.update_job(tracker.job_id, state=state, error=error)
            await self.messenger.edit(tracker, plain_kwargs(text), final=True)
            self.trackers.pop(tracker.job_id, None)
        self._publish(tracker, "cancelled" if state == "cancelled" else "failed", error=error)

    # -- restart -----------------------------------------------------------------------------------------

    async def recover(self) -> tuple[int, int]:
        """After a start: resume the jobs a crash stopped, queue again the ones still waiting
        (``bot/recovery.py``). Returns (failed, queued again)."""
        recovery = Recovery(
            store=self.store,
            messenger=self.messenger,
            max_attempts=self.max_attempts,
            track=self._track_again,
            forget=self._forget,
        )
        return await recovery.run()

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
