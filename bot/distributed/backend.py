"""``RedisJobBackend``: the bot's ``JobBackend`` with GPU workers on other machines.

The bot keeps the waiting jobs itself, in the in-process queue's ``FairWaitingLine`` (round-robin
between users, first in first out per user, the same caps), and hands a job to Redis only when a
worker slot is free, so fairness is decided as late as possible and positions are exact. Workers
report through the event stream; this backend turns those reports back into ``bot.jobs`` events.

Jobs handed to Redis keep running when the bot stops; a restarted bot picks up their results
(``held_jobs`` / ``deliver_held``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import RedisConfig
from bot.distributed.client import RedisError, RedisJobClient
from bot.distributed.protocol import JobMessage, WireEvent
from bot.jobs import (
    Cancelled,
    ChatDone,
    Failed,
    Finished,
    LineBackend,
    Progress,
    Requeued,
    StageTimeouts,
    Started,
    Ticket,
    internal_failure,
)
from omost_engine.engine import ChatResult
from omost_engine.errors import OmostError

if TYPE_CHECKING:
    from bot.config import BotConfig
    from bot.distributed.health import ClusterHealth

log = logging.getLogger(__name__)


class RedisJobBackend(LineBackend):
    """Implements ``bot.jobs.JobBackend`` on a shared Redis served by ``omost-bot worker`` processes."""

    def __init__(
        self,
        config: RedisConfig,
        *,
        max_queue: int = 50,
        timeouts: StageTimeouts = StageTimeouts(),
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The line's running jobs are the ones handed to Redis: running, as far as the bot is concerned.
        super().__init__(max_queue=max_queue)
        self.config = config
        self.client = RedisJobClient(config)
        self.timeouts = timeouts
        self.max_attempts = max_attempts or config.max_attempts
        self.clock = clock
        self._held: set[int] = set()  # in flight since before a restart, delivered after deliver_held()
        self._deliver_held = True
        self._parked: list[WireEvent] = []  # events of held jobs, read before deliver_held()
        self._capacity = 0  # worker slots serving our queue, from the last health read
        self._capacity_at = -math.inf
        self._no_worker_since: float | None = None
        self._connected = False
        self._connecting = asyncio.Lock()
        self._dispatching = asyncio.Lock()
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Which worker (and which attempt) last started each job: for logs, /omost status and tests.
        self.ran_on: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._retry_told: dict[int, int] = {}  # job -> the latest attempt its user was told about

    # -- queries ---------------------------------------------------------------------------------

    async def health(self) -> ClusterHealth:
        await self._connect()
        return await self.client.health()

    # -- restart ---------------------------------------------------------------------------------

    async def held_jobs(self) -> list[Ticket]:
        """Jobs handed to workers before this bot (re)started and not yet delivered.

        The bot keeps tracking these instead of reporting them interrupted, then calls
        ``deliver_held`` once it can receive their events.
        """
        self._deliver_held = False
        await self._connect()
        return [self._line.running[job_id] for job_id in sorted(self._held)]

    def deliver_held(self) -> None:
        self._deliver_held = True
        self._kick()

    # -- changes ---------------------------------------------------------------------------------

    async def submit(self, ticket: Ticket, *, user_cap: int | None = None) -> int:
        self._line.refuse_if_closed()  # before connecting: close() has shut the client
        await self._connect()  # held jobs count against their user's cap
        position = self._line.add(ticket, user_cap=user_cap)
        self._kick()
        # Hand it over now rather than when the pump next wakes: that may be half a second away.
        self._spawn(self._dispatch())
        return position

    async def cancel(self, job_id: int) -> bool:
        if job_id in self._line.running:
            await self.client.cancel(str(job_id))  # the worker (or the client) reports Cancelled
            return True
        return self._line.cancel(job_id)

    def resume(self) -> None:
        self._line.paused = False
        self._kick()
        self._spawn(self._dispatch())

    async def close(self) -> None:
        """Stop taking and dispatching jobs. Jobs on workers go on; a restarted bot delivers them."""
        self._line.closed = True
        for task in [self._pump, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.client.close()
        self._connected = False

    async def join(self, *, timeout: float = 60.0) -> None:
        """Wait until nothing waits or runs (tests, benchmarks, graceful stops)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = self._pump is not None and not self._pump.done()
            if not (self._line or self._line.running or busy or self._tasks):
                return
            if not busy and (self._line.running or self._line.ready):
                self._kick()
            await asyncio.sleep(0.005)

    # -- the pump --------------------------------------------------------------------------------

    async def _connect(self) -> None:
        async with self._connecting:
            if self._connected:
                return
            await self.client.connect()
            self._connected = True
            for job_id in self.client.outstanding:
                ticket = Ticket(job_id=int(job_id), user_id=self.client.user_of(job_id))
                self._line.start(ticket)
                self._held.add(ticket.job_id)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _kick(self) -> None:
        # The pump runs only while jobs wait or run: no task sits forever on an idle bot.
        if not self._line.closed and (self._pump is None or self._pump.done()):
            self._pump = asyncio.get_running_loop().create_task(self._run(), name="omost-redis-pump")

    async def _run(self) -> None:
        last_watch = self.clock()
        # Paused with nothing on the workers, there is nothing to wait for: resume() starts it again.
        while not self._line.closed and (self._line.running or self._line.ready):
            try:
                last_watch = await self._turn(last_watch)
            except (OSError, RedisError) as exc:  # Redis restarting or unreachable: retry, keep the jobs
                log.warning("Redis: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _turn(self, last_watch: float) -> float:
        """One round of the pump: hand out jobs, deliver events, now and then look for lost jobs."""
        await self._dispatch()
        events = await self.client.read_events(block_s=min(self.config.watchdog_s, 0.5))
        if self._deliver_held and self._parked:
            events, self._parked = self._parked + events, []
        handled = []
        for event in events:
            if int(event.job_id) in self._held and not self._deliver_held:
                # The bot is not tracking it yet: kept here, unacknowledged (a crash now loses nothing).
                self._parked.append(event)
                continue
            handled.append(event)
            try:
                await self._handle(event)
            except Exception:  # one bad event must not stop the others from being delivered
                log.exception("could not handle %s event of job %s", event.type, event.job_id)
        await self.client.ack(*handled)
        if self.clock() - last_watch >= self.config.watchdog_s:
            last_watch = self.clock()
            await self.client.watch()
            await self._refresh_capacity()
        return last_watch

    async def _refresh_capacity(self) -> None:
        health = await self.client.health()
        self._capacity = health.capacity(self.config.queue)
        self._capacity_at = self.clock()
        if self._capacity or not self._line:
            self._no_worker_since = None
        elif self._no_worker_since is None:
            self._no_worker_since = self.clock()
        elif self.clock() - self._no_worker_since >= self.config.no_worker_timeout_s:
            waited = self.clock() - self._no_worker_since
            for ticket in self._line.drain():
                self._emit(
                    Failed(
                        ticket.job_id,
                        None,
                        f"no GPU worker is online (waited {waited:.0f} s); try again later",
                    )
                )
            self._no_worker_since = None

    def _busy_slots(self) -> int:
        """Worker slots taken by this bot's jobs; a held job whose outcome already arrived holds none."""
        ended = {int(e.job_id) for e in self._parked if e.terminal}
        return len(self._line.running) - len(ended & self._line.running.keys())

    async def _dispatch(self) -> None:
        """Hand waiting jobs to Redis while workers have free slots."""
        async with self._dispatching:
            if self._line and self.clock() - self._capacity_at >= self.config.watchdog_s:
                try:
                    await self._refresh_capacity()
                except (OSError, RedisError) as exc:  # the pump retries; the jobs keep their places
                    log.warning("Redis: %s; jobs wait", exc)
                    return
            while self._busy_slots() < self._capacity and (ticket := self._line.take()) is not None:
                assert self._handler is not None, "bind() the backend before submitting"
                self._line.announce()
                try:
                    spec = await self._handler.prepare(ticket.job_id)
                    if spec is None:
                        self._line.done(ticket.job_id)
                        continue
                    await self.client.submit(
                        JobMessage(
                            spec=spec,
                            user_id=ticket.user_id,
                            timeouts=self.timeouts,
                            max_attempts=self.max_attempts,
                        )
                    )
                except (
                    Exception
                ) as exc:  # the database or Redis failed: log, tell the user, go on with the rest
                    log.exception("job %s: could not hand it to Redis", ticket.job_id)
                    self._line.done(ticket.job_id)
                    reason = (
                        f"the job could not start: {exc}"
                        if isinstance(exc, OmostError)
                        else internal_failure(ticket.job_id, "the job could not start")
                    )
                    self._emit(Failed(ticket.job_id, None, reason))

    def _tell_requeued(self, job_id: int, attempt: int, reason: str) -> None:
        """One ``Requeued`` per retry, whether the worker, the watchdog or the next run's start says so first."""
        if attempt > self._retry_told.get(job_id, 1):
            self._retry_told[job_id] = attempt
            self._emit(Requeued(job_id, attempt, reason))

    async def _handle(self, event: WireEvent) -> None:
        job_id = int(event.job_id)
        if event.type == "started":
            self.ran_on[job_id] = (event.worker, event.attempt)
            while len(self.ran_on) > 1000:
                self.ran_on.popitem(last=False)
            # Another worker may take a job over before the watchdog saw it waiting: the user still hears of it.
            self._tell_requeued(job_id, event.attempt, "the GPU worker running it stopped")
        elif event.type == "stage":
            self._emit(Started(job_id, event.data["stage"]))
        elif event.type in ("llm", "render"):
            progress = event.progress()
            assert progress is not None
            self._emit(Progress(job_id, progress, self.clock()))
        elif event.type == "chat":
            from omost_engine.layout import Layout

            d = event.data
            self._emit(
                ChatDone(
                    job_id,
                    ChatResult(
                        reply=d["reply"],
                        layout=Layout.from_json(d["layout"]),
                        model=d["model"],
                        tokens=int(d["tokens"]),
                        seconds=float(d["seconds"]),
                        forward_passes=int(d.get("forward_passes", 0)),
                        trimmed_turns=int(d.get("trimmed_turns", 0)),
                        notes=tuple(d.get("notes", ())),
                    ),
                )
            )
        elif event.type == "requeued":
            log.info("job %s: %s; it runs again on the next free worker", job_id, event.data.get("reason"))
            self._tell_requeued(job_id, event.attempt + 1, str(event.data.get("reason") or "worker lost"))
        elif event.terminal:
            self._retry_told.pop(job_id, None)
            # The worker slot is free: hand it the next job before downloading this one's images.
            self._line.done(job_id)
            self._held.discard(job_id)
            self._spawn(self._dispatch())
            if event.type == "result":
                try:
                    self._emit(Finished(job_id, await self.client.outcome(event.job_id)))
                except OmostError as exc:
                    self._emit(Failed(job_id, None, str(exc)))
            elif event.type == "failed":
                self._emit(Failed(job_id, event.data.get("stage"), str(event.data.get("message", "failed"))))
            else:
                self._emit(Cancelled(job_id))
            await self.client.forget(event.job_id)


def backend_from_config(
    config: BotConfig,
    *,
    environ: Mapping[str, str] | None = None,
    path: str | Path | None = None,
) -> RedisJobBackend | None:
    """The Redis backend when a Redis URL is configured (``[redis] url`` or ``OMOST_REDIS_URL``), else None.

    redis is imported only when a URL is set: the in-process queue does not need it.
    """
    redis_config = RedisConfig.load(environ=environ, path=path)
    if redis_config is None:
        return None
    try:
        import redis  # noqa: F401
    except ModuleNotFoundError as exc:
        raise OmostError(
            "a Redis URL is configured but the Redis extra is not installed; "
            "run: pip install 'omost-bot[redis]'",
            parameter="redis_url",
            value=redis_config.url,
            allowed="omost-bot[redis] installed",
        ) from exc
    return RedisJobBackend(
        redis_config,
        max_queue=config.max_queue,
        timeouts=StageTimeouts(llm=config.llm_timeout_s, render=config.render_timeout_s),
    )
