"""``omost-bot worker``: a GPU worker process that takes jobs from Redis through arq.

The worker loads its engine once, then runs arq's worker loop on one queue. Each job reports
``started``, throttled progress, ``chat`` (the layout, before the render) and one terminal event
(``result``, ``failed`` or ``cancelled``) to the shared event stream. Images go to a result hash.

Recovery: arq keeps a job in its queue until it finishes and marks it taken with an "in progress"
key. The worker shortens that key to a lease of a few seconds and renews it with every heartbeat,
so when a worker dies (power, OOM, SIGKILL) its job is free again within one lease and the next
free worker runs it, with arq's try counter as the attempt number. A stopping worker (SIGTERM)
gives its jobs back at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
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
    JOB_FUNCTION,
    JobMessage,
    Keys,
    WireEvent,
    dumps,
    interrupted_message,
    loads,
    png_bytes,
    progress_data,
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
    from arq.connections import ArqRedis

    from omost_engine.engine import ChatResult, Engine

log = logging.getLogger("omost.worker")
ARQ_IN_PROGRESS = "arq:in-progress:"  # arq's key prefix; the lease renews these keys
RESULT_TTL_S = 86_400  # results wait this long for a bot that is down



class WorkerConfig(Declared):
    """A GPU worker's settings: types, ranges and defaults declared once (``omost_engine.declared``)."""

    redis_url: RedisUrl = Field(description="the shared Redis", json_schema_extra={"allowed": REDIS_URL_FORMS})
    queue: Annotated[str, Field(min_length=1, max_length=100)] = Field(DEFAULT_QUEUE, description="queue served")
    prefix: Annotated[str, Field(min_length=1, max_length=100)] = Field("omost", description="Redis key prefix")
    worker_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="this worker's name")
    concurrency: Annotated[int, Field(ge=1, le=64)] = Field(
        1, description="jobs at once; one per GPU is the usual choice")
    heartbeat_s: Annotated[float, Field(ge=0.05, le=60)] = Field(1.0, description="seconds between heartbeats")
    lease_s: Annotated[float, Field(ge=0.5, le=3600)] = Field(
        10.0, description="a dead worker's job runs again after at most this long")
    poll_s: Annotated[float, Field(ge=0.001, le=10)] = Field(
        0.005, description="arq's queue polling interval: the start latency of a job on an idle worker")
    progress_interval_s: Annotated[float, Field(ge=0.0, le=60)] = Field(
        0.25, description="at most one progress event per job this often")
    engine_name: Annotated[str, Field(min_length=1, max_length=100)] = "real"

    @model_validator(mode="after")
    def _rules(self) -> WorkerConfig:
        if self.lease_s < 2 * self.heartbeat_s:
            raise OmostError(f"worker lease_s ({self.lease_s:g}) must be at least twice heartbeat_s "
                             f"({self.heartbeat_s:g}), or a live worker could lose its jobs",
                             parameter="lease_s", value=self.lease_s, allowed=f">= {2 * self.heartbeat_s:g}")
        check_redis_url(self.redis_url)
        return self


@dataclass
class RunningJob:
    job_id: str  # the bot's id, in every event
    attempt: int
    arq_id: str = ""  # this run's id: the keys of its lease, cancel flag and result
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
        if (isinstance(event, Progress) and isinstance(last, Progress)
                and type(event.progress) is type(last.progress)):
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
    """One worker process: an engine, an arq worker loop, a heartbeat and a cancel listener."""

    def __init__(self, engine: Engine, config: WorkerConfig, *, models: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.config = config.validated()
        self.keys = Keys(config.prefix)
        self.models = models or {}
        self.running: dict[str, RunningJob] = {}
        self.done = 0
        self.failed = 0
        self.started_at = time.time()
        self._redis: ArqRedis | None = None

    @property
    def redis(self) -> ArqRedis:
        assert self._redis is not None, "the worker is not connected"
        return self._redis

    async def run(self, *, handle_signals: bool = False) -> None:
        """Serve jobs until cancelled, or until SIGTERM/SIGINT with ``handle_signals`` (the CLI)."""
        from arq.connections import RedisSettings, create_pool
        from arq.worker import Worker, func

        self._redis = await create_pool(RedisSettings.from_dsn(self.config.redis_url),
                                        job_serializer=dumps, job_deserializer=loads,
                                        default_queue_name=self.keys.queue(self.config.queue))
        worker = Worker(
            # arq may retry freely: JobMessage.max_attempts decides, with a clear message (see _run_job).
            functions=[func(self._run_job, name=JOB_FUNCTION, max_tries=1000)],
            queue_name=self.keys.queue(self.config.queue),
            redis_pool=self._redis,
            max_jobs=self.config.concurrency,
            job_timeout=7 * 86_400,  # execute_job enforces the stage time limits
            keep_result=3600,
            poll_delay=self.config.poll_s,
            max_tries=1000,
            health_check_interval=max(self.config.heartbeat_s, 1.0),
            health_check_key=self.keys.worker(self.config.worker_id) + ":arq",
            handle_signals=handle_signals,
            on_shutdown=self._signed_off,
            job_serializer=dumps,
            job_deserializer=loads,
            log_results=False,
        )
        side_tasks = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._cancel_listener())]
        await self._beat()
        log.info("worker %s serving queue %r with %d slot(s)", self.config.worker_id, self.config.queue,
                 self.config.concurrency)
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            log.info("worker %s stopping", self.config.worker_id)
        finally:
            for task in side_tasks:
                task.cancel()
            # Cancels the running jobs (they give themselves back to the queue), then closes the pool.
            await worker.close()

    async def _signed_off(self, ctx: dict[str, Any]) -> None:
        await self.redis.delete(self.keys.worker(self.config.worker_id))

    # -- health --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "id": self.config.worker_id, "host": socket.gethostname(), "pid": os.getpid(),
            "queue": self.config.queue, "engine": self.config.engine_name, "models": self.models,
            "concurrency": self.config.concurrency, "done": self.done, "failed": self.failed,
            "started_at": self.started_at, "ts": time.time(),
            "running": [{"job_id": j.job_id, "attempt": j.attempt, "since": j.started, "stage": j.stage}
                        for j in self.running.values()],
        }

    async def _beat(self) -> None:
        ttl_ms = int(max(3 * self.config.heartbeat_s, self.config.lease_s) * 1000)
        lease_ms = int(self.config.lease_s * 1000)
        jobs = list(self.running.items())
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.worker(self.config.worker_id), dumps(self.health()), px=ttl_ms)
            pipe.zadd(self.keys.workers, {self.config.worker_id: time.time()})
            for arq_id, _job in jobs:
                pipe.pexpire(ARQ_IN_PROGRESS + arq_id, lease_ms)
                pipe.pexpire(self.keys.running(arq_id), lease_ms)
            replies = await pipe.execute()
        for (arq_id, job), renewed in zip(jobs, replies[2::2], strict=True):
            if not renewed and arq_id in self.running:
                # The lease ran out (this process stalled): another worker may run the job now.
                log.warning("lease of job %s lost; stopping it here", job.job_id)
                job.stop("lost")

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
                job_id = message["data"].decode() if isinstance(message["data"], bytes) else str(message["data"])
                job = self.running.get(job_id)  # the message names the run (arq's id), not the bot's job
                if job is not None:
                    log.info("job %s cancelled by the bot", job.job_id)
                    job.stop("cancel")
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- jobs ------------------------------------------------------------------------------------

    async def _emit(self, job_id: str, type_: str, attempt: int, **data: Any) -> None:
        event = WireEvent(type=type_, job_id=job_id, attempt=attempt,  # type: ignore[arg-type]
                          worker=self.config.worker_id, data=data)
        await self.redis.xadd(self.keys.events, event.encode())  # type: ignore[arg-type]

    async def _run_job(self, ctx: dict[str, Any], payload: dict[str, Any]) -> str:
        arq_id, attempt = str(ctx["job_id"]), int(ctx["job_try"])
        try:
            message = JobMessage.from_json(payload)
        except (OmostError, KeyError, TypeError, ValueError) as exc:
            job_id = str(payload.get("job_id", arq_id)) if isinstance(payload, dict) else arq_id
            log.exception("job %s: the job message is not valid", job_id)
            # An OmostError says what is wrong in words for people (e.g. a version skew); other errors may not.
            text = (f"the job message is not valid: {exc}" if isinstance(exc, OmostError)
                    else internal_failure(job_id, "the GPU worker could not read the job"))
            await self._emit(job_id, "failed", attempt, message=text)
            return "invalid"
        job = RunningJob(message.job_id, attempt, arq_id)
        if attempt > message.max_attempts:
            await self._emit(job.job_id, "failed", attempt,
                             message=interrupted_message(attempt - 1))
            return "lost"
        self.running[arq_id] = job  # before the cancel check, so a cancel sent meanwhile is not missed
        try:
            lease_ms = int(self.config.lease_s * 1000)
            started = WireEvent(type="started", job_id=job.job_id, attempt=attempt, worker=self.config.worker_id,
                                data={"queue": self.config.queue})
            async with self.redis.pipeline(transaction=False) as pipe:  # one round trip before the engine starts
                pipe.exists(self.keys.cancelled(arq_id))
                pipe.pexpire(ARQ_IN_PROGRESS + arq_id, lease_ms)
                pipe.set(self.keys.running(arq_id), dumps({"worker": self.config.worker_id, "attempt": attempt,
                                                              "arq_id": arq_id, "since": job.started}), px=lease_ms)
                pipe.xadd(self.keys.events, started.encode())  # type: ignore[arg-type]
                cancelled, *_ = await pipe.execute()
            if cancelled:
                await self._emit(job.job_id, "cancelled", attempt)
                return "cancelled"
            return await self._execute(message, job)
        finally:
            self.running.pop(arq_id, None)
            if job.stop_reason != "lost":  # after a lost lease the key may be another worker's
                with contextlib.suppress(Exception):
                    await self.redis.delete(self.keys.running(arq_id))

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
            await execute_job(self.engine, message.spec, emit=outbox.put, cancel=job.token, timeouts=message.timeouts)
        except asyncio.CancelledError:
            # The worker is stopping: arq puts the job back in its queue for another worker.
            job.stop("shutdown")
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stop_outbox(outbox, job))
            raise
        try:
            await outbox.close()
        except Exception:  # Redis failed under the events: arq retries the job; the log says which
            log.exception("job %s: could not send its events to the bot", job.job_id)
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
            "worker": self.config.worker_id, "attempt": job.attempt, "layout": output.layout.to_json(),
            "render": {"model": render.model, "seconds": render.seconds, "params": render.params.to_dict()},
        }
        if output.chat is not None:
            meta["chat"] = chat_json(output.chat)
        key = self.keys.result(job.arq_id)
        fields = {"image": png_bytes(render.image), "masks": png_bytes(render.masks), "meta": dumps(meta)}
        event = WireEvent(type="result", job_id=job.job_id, attempt=job.attempt, worker=self.config.worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # the event never comes without its result
            pipe.delete(key)
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, RESULT_TTL_S)
            pipe.xadd(self.keys.events, event.encode())  # type: ignore[arg-type]
            await pipe.execute()


def chat_json(chat: ChatResult) -> dict[str, Any]:
    return {"reply": chat.reply, "layout": chat.layout.to_json(), "model": chat.model, "tokens": chat.tokens,
            "seconds": chat.seconds, "forward_passes": chat.forward_passes, "trimmed_turns": chat.trimmed_turns,
            "notes": list(chat.notes)}


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get("OMOST_REDIS_URL"),
                        help="Redis server shared with the bot (default: $OMOST_REDIS_URL)")
    parser.add_argument("--queue", default=os.environ.get("OMOST_WORKER_QUEUE", DEFAULT_QUEUE),
                        help="queue to serve; give workers with other models their own queue (default: %(default)s)")
    parser.add_argument("--prefix", default=os.environ.get("OMOST_REDIS_PREFIX", "omost"),
                        help="Redis key prefix, the same as the bot's (default: %(default)s)")
    parser.add_argument("--name", default=None, help="worker id shown in health (default: host-pid)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("OMOST_WORKER_CONCURRENCY", "1")),
                        help="jobs at once (default: %(default)s; one per GPU)")
    parser.add_argument("--engine", choices=("real", "scripted"), default="real",
                        help="real: load the models of the bot configuration; scripted: no models (tests, demos)")
    parser.add_argument("--config", default=None, help="bot configuration file (models, device, memory mode)")
    parser.add_argument("--scripted-seconds", type=float, default=0.2,
                        help="scripted engine: seconds per job, half LLM and half render (default: %(default)s)")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    parser.add_argument("--lease", type=float, default=10.0,
                        help="seconds after which a silent worker's job runs again elsewhere")
    parser.add_argument("--poll", type=float, default=0.005,
                        help="seconds between queue polls when idle: a new job waits half of it on average")


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
        raise OmostError("this installation has no real engine (bot.engine_factory is missing); "
                         "use --engine scripted or install the full omost-bot",
                         parameter="engine", value="real", allowed="scripted") from exc
    models = {"llm": config.llm_endpoint or config.llm or "default", "sdxl": config.sdxl or "default"}
    return create_engine(config), models


def handle(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.redis_url:
        print("omost-bot worker: error: a Redis URL is needed (--redis-url or $OMOST_REDIS_URL)", file=sys.stderr)
        return 2
    try:
        extra = {"worker_id": args.name} if args.name else {}
        config = WorkerConfig(redis_url=args.redis_url, queue=args.queue, prefix=args.prefix,
                              concurrency=args.concurrency, heartbeat_s=args.heartbeat, lease_s=args.lease,
                              poll_s=args.poll, engine_name=args.engine, **extra).validated()
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
    parser = argparse.ArgumentParser(prog="python -m bot.distributed.worker", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return handle(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
