"""Restart recovery: the jobs a crash (or a clean shutdown) left running resume, the waiting ones are queued
again, a result Discord accepted just before the crash is kept, and a job that keeps crashing fails."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord

from bot.job_store import JobStore
from bot.jobs import QueueFullError
from bot.messenger import Messenger
from bot.presenter import Tracker
from bot.storage import JobRecord

log = logging.getLogger(__name__)


class Recovery:
    """One pass of recovery after a start, over the job store and the messenger; ``track`` and ``forget``
    are the job service's (it keeps the trackers)."""

    def __init__(
        self,
        *,
        store: JobStore,
        messenger: Messenger,
        max_attempts: int,
        track: Callable[..., Awaitable[Tracker]],
        forget: Callable[[int], object],
    ) -> None:
        self.store = store
        self.storage = store.storage
        self.backend = store.backend
        self.messenger = messenger
        self.max_attempts = max_attempts
        self.track = track
        self.forget = forget

    async def run(self) -> tuple[int, int]:
        """After a start: resume the jobs a crash stopped, queue again the ones still waiting.
        Returns (failed, queued again).

        A job that was running resumes at the front of the line as its next attempt, up to
        ``max_attempts`` runs in all; then it fails with its job id. One whose result Discord may
        have accepted before the crash (delivery intent recorded) is looked up first: a result on screen
        is recorded as done and never touched. Jobs a backend still holds (Redis workers run on while the
        bot restarts) are tracked again, and the backend is told to deliver their events once that is done.
        """
        held_jobs = getattr(self.backend, "held_jobs", None)
        held = {ticket.job_id for ticket in await held_jobs()} if held_jobs is not None else set()
        running = await self.storage.jobs_in_state("running")
        for job in running:
            if job.id in held:
                await self.track(job, phase="llm")
        resumed: list[int] = []
        failed = 0
        for job in running:
            if job.id in held or await self._delivered_before_crash(job):
                continue
            if job.attempt >= self.max_attempts:
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
            tracker = await self.track(job, phase="queued")
            if job.id in resumed:
                tracker.requeued_attempt, tracker.requeued_after_restart = job.attempt, True
            try:
                await self.store.submit(job.id, job.user_id)
                requeued += 1
            except QueueFullError as exc:
                self.forget(job.id)
                await self.storage.update_job(job.id, state="failed", error=str(exc))
                failed += 1
                continue
            if job.id in resumed:  # the status message says so at once, not at the next progress report
                self.messenger.request_edit(tracker, urgent=True)
        return failed, requeued

    async def _delivered_before_crash(self, job: JobRecord) -> bool:
        """Whether a running job's result reached Discord before the crash (then it is recorded as done).
        Only a job whose delivery had started can have one."""
        if job.delivery_started_at is None:
            return False
        try:
            found = await self.messenger.find_result(
                job.id,
                channel_id=job.channel_id,
                guild_id=job.guild_id,
                status_message_id=job.status_message_id,
            )
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
        await self.messenger.report_failure(
            job_id=job.id,
            user_id=job.user_id,
            channel_id=job.channel_id,
            guild_id=job.guild_id,
            status_message_id=job.status_message_id,
            error=error,
        )
