"""``omost-bot worker``: a GPU worker process that takes jobs from a Redis stream.

The worker loads its engine once, then reads its queue's job stream through the workers' consumer
group. Each job reports ``started``, throttled progress, ``chat`` (the layout, before the render) and
one terminal event (``result``, ``failed`` or ``cancelled``) to the shared event stream. Images go
to a result hash.

Recovery is the stream's own: a job read by a worker stays in the group's pending entries until
the worker acknowledges it at the end. The worker renews its pending entries with every heartbeat
(their idle time starts again); when a worker dies (power, OOM, SIGKILL) its entries go idle, and
after one lease the next free worker claims them, with the entry's delivery count as the attempt
number. A stopping worker (SIGTERM) marks its entries idle at once, so another worker takes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, model_validator

from bot.config import REDIS_URL_FORMS, RedisUrl, check_redis_url
from bot.distributed.protocol import (
    DEFAULT_QUEUE,
    WORKER_GROUP,
    EventType,
    JobMessage,
    Keys,
    WireEvent,
    dumps,
    interrupted_message,
    png_bytes,
    png_image,
    progress_data,
    read_job_entry,
    result_fields,
)
from bot.jobs import (
    Cancelled,
    ChatDone,
    Failed,
    Finished,
    JobEvent,
    JobOutput,
    Progress,
    Started,
    execute_job,
    internal_failure,
)
from omost_engine.declared import Declared
from omost_engine.errors import OmostError
from omost_engine.progress import CancelToken

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from omost_engine.engine import ChatResult, Engine

log = logging.getLogger("omost.worker")
RESULT_TTL_S = 86_400  # results wait this long for a bot that is down
GIVEN_BACK_IDLE_MS = 10**9  # a stopping worker's entries look idle this long: any worker claims them at once

# Set the idle time of the entries this worker still owns: 0 renews their lease, a long one gives
# them back. The others were claimed by another worker while this one stalled, and stay that
# worker's. Atomic, so a claim cannot slip in between; returns the entries still owned.
OWN_ENTRIES_SCRIPT = """
local kept = {}
for i = 4, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
"""


class WorkerConfig(Declared):
    """A GPU worker's settings: types, ranges and defaults declared once (``omost_engine.declared``)."""

    redis_url: RedisUrl = Field(
        description="the shared Redis", json_schema_extra={"allowed": REDIS_URL_FORMS}
    )
    queue: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        DEFAULT_QUEUE, description="queue served"
    )
    prefix: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        "omost", description="Redis key prefix"
    )
    worker_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="this worker's name"
    )
    concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="jobs at once; one per GPU is the usual choice"
    )
    heartbeat_s: Annotated[float, Field(ge=0.05, le=60)] = Field(
        1.0, description="seconds between heartbeats"
    )
    lease_s: Annotated[float, Field(ge=0.5, le=3600)] = Field(
        10.0, description="a dead worker's job runs again after at most this long (plus one heartbeat)"
    )
    progress_interval_s: Annotated[float, Field(ge=0.0, le=60)] = Field(
        0.25, description="at most one progress event per job this often"
    )
    engine_name: Annotated[str, Field(min_length=1, max_length=100)] = "real"

    @model_validator(mode="after")
    def _rules(self) -> WorkerConfig:
        if self.lease_s < 2 * self.heartbeat_s:
            raise OmostError(
                f"worker lease_s ({self.lease_s:g}) must be at least twice heartbeat_s "
                f"({self.heartbeat_s:g}), or a live worker could lose its jobs",
                parameter="lease_s",
                value=self.lease_s,
                allowed=f">= {2 * self.heartbeat_s:g}",
            )
        check_redis_url(self.redis_url)
        return self


@dataclass
class RunningJob:
    job_id: str  # the bot's id, in every event
    attempt: int  # the stream entry's delivery count
    run_id: str = ""  # this run's id: the keys of its cancel flag and result
    entry_id: str = ""  # the job's entry in the queue's stream (its lease is the entry's idle time)
    started: float = field(default_factory=time.time)
    stage: str = "starting"
    token: CancelToken = field(default_factory=CancelToken)
    stop_reason: str | None = None  # cancel | timeout | lost | shutdown

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.token.cancel()


class EventOutbox:
    """Sends one job's events in order; progress is coalesced and sent at most every ``interval`` s.

    ``execute_job`` reports on the event loop through a plain callback; sending needs Redis round
    trips, so events queue here and one task sends them.
    """

    def __init__(self, send: Callable[[JobEvent], Awaitable[None]], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._items: deque[JobEvent] = deque()
        self._wake = asyncio.Event()
        self._last_progress = -math.inf
        self._closing = False
        self._drop_progress = False
        self._task = asyncio.create_task(self._run())

    def put(self, event: JobEvent) -> None:
        last = self._items[-1] if self._items else None
        if (
            isinstance(event, Progress)
            and isinstance(last, Progress)
            and type(event.progress) is type(last.progress)
        ):
            self._items[-1] = event  # only the newest report of a stretch matters
        else:
            self._items.append(event)
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            head = self._items[0]
            if isinstance(head, Progress) and self._drop_progress:
                self._items.popleft()
                continue
            wait = self._last_progress + self._interval - time.monotonic()
            if isinstance(head, Progress) and len(self._items) == 1 and wait > 0 and not self._closing:
                # Hold it back until the interval passed or another event arrives (newer reports replace it).
                timer = loop.call_later(wait, self._wake.set)
                await self._wake.wait()
                self._wake.clear()
                timer.cancel()
                if len(self._items) == 1 and self._last_progress + self._interval > time.monotonic():
                    continue
            self._items.popleft()
            if isinstance(head, Progress):
                self._last_progress = time.monotonic()
            await self._send(head)

    async def close(self, *, drop_progress: bool = False) -> None:
        """Send what is queued (progress too, unless dropped), then stop."""
        self._closing = True
        self._drop_progress = drop_progress
        self._wake.set()
        await self._task


class GpuWorker:
    """One worker process: an engine, a reader of its queue's job stream, a heartbeat and a cancel listener."""

    def __init__(self, engine: Engine, config: WorkerConfig, *, models: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.config = config.validated()
        self.keys = Keys(config.prefix)
        self.stream = self.keys.queue(config.queue)
        self.models = models or {}
        self.running: dict[str, RunningJob] = {}  # by stream entry id
        self.done = 0
        self.failed = 0
        self.started_at = time.time()
        self._redis: Redis | None = None
        self._jobs: set[asyncio.Task[str]] = set()

    @property
    def redis(self) -> Redis:
        assert self._redis is not None, "the worker is not connected"
        return self._redis

    async def run(self, *, handle_signals: bool = False) -> None:
        """Serve jobs until cancelled, or until SIGTERM/SIGINT with ``handle_signals`` (the CLI)."""
        from redis.asyncio import Redis

        self._redis = Redis.from_url(self.config.redis_url, socket_connect_timeout=5)
        main = asyncio.current_task()
        if handle_signals and main is not None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, main.cancel)
        side_tasks: list[asyncio.Task[None]] = []
        try:
            await self._create_group()
            await self._beat()
            side_tasks = [
                asyncio.create_task(self._heartbeat_loop()),
                asyncio.create_task(self._cancel_listener()),
            ]
            log.info(
                "worker %s serving queue %r with %d slot(s)",
                self.config.worker_id,
                self.config.queue,
                self.config.concurrency,
            )
            await self._serve()
        except asyncio.CancelledError:
            log.info("worker %s stopping", self.config.worker_id)
        finally:
            for task in side_tasks:
                task.cancel()
            await self._give_back()
            with contextlib.suppress(Exception):
                await self.redis.delete(self.keys.worker(self.config.worker_id))
            await self.redis.aclose(close_connection_pool=True)
            self._redis = None

    async def _create_group(self) -> None:
        from redis.exceptions import ResponseError

        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(self.stream, WORKER_GROUP, id="0", mkstream=True)

    async def _serve(self) -> None:
        """Fill free slots until cancelled."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError

        while True:
            free = self.config.concurrency - len(self._jobs)
            if free <= 0:
                await asyncio.wait(
                    self._jobs, timeout=self.config.heartbeat_s, return_when=asyncio.FIRST_COMPLETED
                )
                continue
            try:
                await self._take(free)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group()  # Redis lost its data (flushed): serve the new stream
            except RedisConnectionError as exc:  # Redis restarting: the jobs wait in Redis; try again shortly
                log.warning("Redis: %s; retrying in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _take(self, free: int) -> None:
        """Start up to ``free`` jobs: first those whose worker died (claimed), then new ones (read, blocking)."""
        block_ms = max(1, int(self.config.heartbeat_s * 1000))  # claims are looked for at least this often
        taken = await self._claim_stale(free)
        if len(taken) < free:
            reply = await self.redis.xreadgroup(
                WORKER_GROUP,
                self.config.worker_id,
                {self.stream: ">"},
                count=free - len(taken),
                block=block_ms,
            )
            taken += [(_text(entry_id), fields, 1) for entry_id, fields in (reply[0][1] if reply else [])]
        for entry_id, fields, attempt in taken:
            task = asyncio.create_task(self._run_job(entry_id, fields, attempt))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _claim_stale(self, count: int) -> list[tuple[str, dict[bytes, bytes], int]]:
        """Pending entries idle for a lease (their worker died or stopped), claimed by this worker."""
        lease_ms = int(self.config.lease_s * 1000)
        stale = await self.redis.xpending_range(
            self.stream, WORKER_GROUP, min="-", max="+", count=count, idle=lease_ms
        )
        taken = []
        for pending in stale:
            entry_id = _text(pending["message_id"])
            if entry_id in self.running:
                continue
            claimed = await self.redis.xclaim(
                self.stream,
                WORKER_GROUP,
                self.config.worker_id,
                min_idle_time=lease_ms,
                message_ids=[entry_id],
            )
            if not claimed:
                continue  # another worker was quicker
            _, fields = claimed[0]
            if not fields:  # the entry was deleted meanwhile (cancelled, delivered): nothing to run
                await self.redis.xack(self.stream, WORKER_GROUP, entry_id)
                continue
            log.info("claimed job entry %s from %s", entry_id, _text(pending["consumer"]))
            taken.append((entry_id, fields, int(pending["times_delivered"]) + 1))
        return taken

    async def _give_back(self) -> None:
        """Stop the running jobs; their entries look idle at once, so the next free worker claims them."""
        given = [job.entry_id for job in self.running.values() if job.stop_reason != "lost"]
        jobs = list(self._jobs)
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._set_idle(given, GIVEN_BACK_IDLE_MS)

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "id": self.config.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queue": self.config.queue,
            "engine": self.config.engine_name,
            "models": self.models,
            "concurrency": self.config.concurrency,
            "done": self.done,
            "failed": self.failed,
            "started_at": self.started_at,
            "ts": time.time(),
            "running": [
                {"job_id": j.job_id, "attempt": j.attempt, "since": j.started, "stage": j.stage}
                for j in self.running.values()
            ],
        }

    async def _beat(self) -> None:
        ttl_ms = int(max(3 * self.config.heartbeat_s, self.config.lease_s) * 1000)
        jobs = list(self.running.items())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.worker(self.config.worker_id), dumps(self.health()), px=ttl_ms)
            pipe.zadd(self.keys.workers, {self.config.worker_id: time.time()})
            await pipe.execute()
        if not jobs:
            return
        owned = await self._set_idle([entry_id for entry_id, _ in jobs], 0)
        for entry_id, job in jobs:
            if entry_id not in owned and self.running.get(entry_id) is job:
                # The lease ran out (this process stalled) and another worker claimed the job, or it was delivered.
                log.warning("lease of job %s lost; stopping it here", job.job_id)
                job.stop("lost")

    async def _set_idle(self, entry_ids: list[str], idle_ms: int) -> set[str]:
        """Renew (0) or give back (long) those of ``entry_ids`` this worker still owns; returns those."""
        if not entry_ids:
            return set()
        kept = await self.redis.eval(
            OWN_ENTRIES_SCRIPT,
            1,
            self.stream,  # type: ignore[misc]  # redis-py types its asyncio commands as Awaitable[T] | T
            WORKER_GROUP,
            self.config.worker_id,
            str(idle_ms),
            *entry_ids,
        )
        return {_text(entry_id) for entry_id in kept}

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self._beat()
            except Exception:  # Redis unreachable for a moment: keep the loop alive
                log.exception("heartbeat failed")

    async def _cancel_listener(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.keys.cancel_channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                run_id = _text(message["data"])  # the message names the run, not the bot's job
                for job in list(self.running.values()):
                    if job.run_id == run_id:
                        log.info("job %s cancelled by the bot", job.job_id)
                        job.stop("cancel")
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated

    # -- jobs ------------------------------------------------------------------------------------

    async def _emit(self, job_id: str, type_: EventType, attempt: int, **data: Any) -> None:
        event = WireEvent(
            type=type_,
            job_id=job_id,
            attempt=attempt,
            worker=self.config.worker_id,
            data=data,
        )
        await self.redis.xadd(self.keys.events, event.encode())  # type: ignore[arg-type]  # redis-py wants an invariant dict[FieldT, EncodableT] of fields

    async def _done_with(self, entry_id: str) -> None:
        """The job ended here: its entry leaves the pending list and the stream."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, WORKER_GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()

    async def _run_job(self, entry_id: str, fields: dict[bytes, bytes], attempt: int) -> str:
        run_id, payload = read_job_entry(fields)
        try:
            message = JobMessage.from_json(payload)
        except (OmostError, KeyError, TypeError, ValueError) as exc:
            job_id = str(payload.get("job_id", run_id)) if isinstance(payload, dict) else run_id
            log.exception("job %s: the job message is not valid", job_id)
            # An OmostError says what is wrong in words for people (e.g. a version skew); other errors may not.
            text = (
                f"the job message is not valid: {exc}"
                if isinstance(exc, OmostError)
                else internal_failure(job_id, "the GPU worker could not read the job")
            )
            await self._emit(job_id, "failed", attempt, message=text)
            await self._done_with(entry_id)
            return "invalid"
        job = RunningJob(message.job_id, attempt, run_id, entry_id)
        if message.has_base:
            message = await self._with_base(message, run_id)
        if attempt > message.max_attempts:
            await self._emit(job.job_id, "failed", attempt, message=interrupted_message(attempt - 1))
            await self._done_with(entry_id)
            return "lost"
        self.running[entry_id] = job  # before the cancel check, so a cancel sent meanwhile is not missed
        try:
            started = WireEvent(
                type="started",
                job_id=job.job_id,
                attempt=attempt,
                worker=self.config.worker_id,
                data={"queue": self.config.queue},
            )
            async with self.redis.pipeline(
                transaction=False
            ) as pipe:  # one round trip before the engine starts
                pipe.exists(self.keys.cancelled(run_id))
                pipe.xadd(self.keys.events, started.encode())  # type: ignore[arg-type]  # redis-py wants an invariant dict[FieldT, EncodableT] of fields
                cancelled, _ = await pipe.execute()
            outcome = "cancelled"
            if cancelled:
                await self._emit(job.job_id, "cancelled", attempt)
            else:
                outcome = await self._execute(message, job)
            if job.stop_reason != "lost":  # after a lost lease the entry is another worker's
                await self._done_with(entry_id)
            return outcome
        finally:
            self.running.pop(entry_id, None)

    async def _with_base(self, message: JobMessage, run_id: str) -> JobMessage:
        """An upscale's message with its base image from the run's base key; without it (expired, Redis
        flushed) the render runs in full: the same layout and seed give the same base, then the high-res pass."""
        data = await self.redis.get(self.keys.base(run_id))
        if data is None:
            log.warning("job %s: its base image is gone from Redis; rendering it in full", message.job_id)
            return dataclasses.replace(message, has_base=False)
        spec = dataclasses.replace(message.spec, base=png_image(data))
        return dataclasses.replace(message, spec=spec)

    async def _execute(self, message: JobMessage, job: RunningJob) -> str:
        """Run the bot's own ``execute_job`` (same stages, time limits and messages as in-process)."""
        outcome: list[str] = []

        async def send(event: JobEvent) -> None:
            if job.stop_reason == "lost":
                return  # another worker runs the job now; this run says nothing more
            await self._publish(job, event)
            if isinstance(event, Finished | Failed | Cancelled):
                outcome.append(type(event).__name__.lower())

        outbox = EventOutbox(send, self.config.progress_interval_s)
        try:
            await execute_job(
                self.engine, message.spec, emit=outbox.put, cancel=job.token, timeouts=message.timeouts
            )
        except asyncio.CancelledError:
            # The worker is stopping: its entry is given back for another worker (see _give_back).
            job.stop("shutdown")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stop_outbox(outbox, job))
            raise
        try:
            await outbox.close()
        except (
            Exception
        ):  # Redis failed under the events: the entry stays pending and runs again; the log says why
            log.exception("job %s: could not send its events to the bot", job.job_id)
            job.stop("lost")
            raise
        if "finished" in outcome:
            self.done += 1
        elif "failed" in outcome:
            self.failed += 1
        return outcome[-1] if outcome else job.stop_reason or "stopped"

    async def _stop_outbox(self, outbox: EventOutbox, job: RunningJob) -> None:
        await outbox.close(drop_progress=True)
        await self._emit(job.job_id, "requeued", job.attempt, reason="the GPU worker stopped")

    async def _publish(self, job: RunningJob, event: JobEvent) -> None:
        """One ``bot.jobs`` event as a wire event (images go to the result hash first)."""
        if isinstance(event, Started):
            job.stage = event.stage
            await self._emit(job.job_id, "stage", job.attempt, stage=event.stage)
        elif isinstance(event, Progress):
            type_, data = progress_data(event.progress)
            await self._emit(job.job_id, type_, job.attempt, **data)
        elif isinstance(event, ChatDone):
            await self._emit(job.job_id, "chat", job.attempt, **chat_json(event.result))
        elif isinstance(event, Finished):
            await self._store_result(job, event.output)
        elif isinstance(event, Failed):
            await self._emit(job.job_id, "failed", job.attempt, stage=event.stage, message=event.message)
        elif isinstance(event, Cancelled):
            await self._emit(job.job_id, "cancelled", job.attempt)

    async def _store_result(self, job: RunningJob, output: JobOutput) -> None:
        render = output.render
        meta: dict[str, Any] = {
            "worker": self.config.worker_id,
            "attempt": job.attempt,
            "layout": output.layout.to_json(),
            "render": {
                "model": render.model,
                "seconds": render.seconds,
                "params": render.params.to_dict(),
                "seeds": list(render.seeds),
                "batched": render.batched,
            },
        }
        if output.chat is not None:
            meta["chat"] = chat_json(output.chat)
        key = self.keys.result(job.run_id)
        fields = {
            "image": png_bytes(render.image),
            "masks": png_bytes(render.masks),
            "meta": dumps(meta),
            **result_fields(list(render.images)),
        }
        event = WireEvent(type="result", job_id=job.job_id, attempt=job.attempt, worker=self.config.worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # the event never comes without its result
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, RESULT_TTL_S)
            pipe.xadd(self.keys.events, event.encode())  # type: ignore[arg-type]  # redis-py wants an invariant dict[FieldT, EncodableT] of fields
            await pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def chat_json(chat: ChatResult) -> dict[str, Any]:
    return {
        "reply": chat.reply,
        "layout": chat.layout.to_json(),
        "model": chat.model,
        "tokens": chat.tokens,
        "seconds": chat.seconds,
        "forward_passes": chat.forward_passes,
        "trimmed_turns": chat.trimmed_turns,
        "notes": list(chat.notes),
    }


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("OMOST_REDIS_URL"),
        help="Redis server shared with the bot (default: $OMOST_REDIS_URL)",
    )
    parser.add_argument(
        "--queue",
        default=os.environ.get("OMOST_WORKER_QUEUE", DEFAULT_QUEUE),
        help="queue to serve; give workers with other models their own queue (default: %(default)s)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("OMOST_REDIS_PREFIX", "omost"),
        help="Redis key prefix, the same as the bot's (default: %(default)s)",
    )
    parser.add_argument("--name", default=None, help="worker id shown in health (default: host-pid)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=int(os.environ.get("OMOST_WORKER_CONCURRENCY", "1")),
        help="jobs at once (default: %(default)s; one per GPU)",
    )
    parser.add_argument(
        "--engine",
        choices=("real", "scripted"),
        default="real",
        help="real: load the models of the bot configuration; scripted: no models (tests, demos)",
    )
    parser.add_argument("--config", default=None, help="bot configuration file (models, device, memory mode)")
    parser.add_argument(
        "--scripted-seconds",
        type=float,
        default=0.2,
        help="scripted engine: seconds per job, half LLM and half render (default: %(default)s)",
    )
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    parser.add_argument(
        "--lease",
        type=float,
        default=10.0,
        help="seconds after which a silent worker's job runs again elsewhere",
    )


def build_engine(args: argparse.Namespace) -> tuple[Engine, dict[str, str]]:
    """The engine and the model names it serves (advertised in health)."""
    if args.engine == "scripted":
        from omost_engine.testing.scripted_engine import ScriptedEngine

        seconds = max(0.0, float(args.scripted_seconds))
        engine = ScriptedEngine(chat_seconds=seconds / 2, render_seconds=seconds / 2)
        return engine, {"llm": engine.llm_name, "sdxl": engine.model_name}
    from bot.config import load_config

    config = load_config(path=args.config)
    try:
        from bot.engine_factory import create_engine
    except ModuleNotFoundError as exc:
        raise OmostError(
            "this installation has no real engine (bot.engine_factory is missing); "
            "use --engine scripted or install the full omost-bot",
            parameter="engine",
            value="real",
            allowed="scripted",
        ) from exc
    models = {"llm": config.llm_endpoint or config.llm or "default", "sdxl": config.sdxl or "default"}
    return create_engine(config), models


def handle(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.redis_url:
        print(
            "omost-bot worker: error: a Redis URL is needed (--redis-url or $OMOST_REDIS_URL)",
            file=sys.stderr,
        )
        return 2
    try:
        extra = {"worker_id": args.name} if args.name else {}
        config = WorkerConfig(
            redis_url=args.redis_url,
            queue=args.queue,
            prefix=args.prefix,
            concurrency=args.concurrency,
            heartbeat_s=args.heartbeat,
            lease_s=args.lease,
            engine_name=args.engine,
            **extra,
        ).validated()
        engine, models = build_engine(args)
    except OmostError as exc:
        print(f"omost-bot worker: error: {exc}", file=sys.stderr)
        return 2
    from redis.exceptions import RedisError

    try:
        asyncio.run(GpuWorker(engine, config, models=models).run(handle_signals=True))
    except (OSError, RedisError) as exc:  # unreachable at start, or gone for good: a supervisor restarts us
        print(f"omost-bot worker: error: Redis at {config.redis_url}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot.distributed.worker", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return handle(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
