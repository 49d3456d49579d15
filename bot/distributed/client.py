"""The bot's side of the Redis job path: submit, cancel, read events, fetch results, watch for lost jobs.

Jobs go into arq's queue (a sorted set by submit time, so first in, first out across all workers).
Workers answer through one Redis stream that the bot reads with a consumer group: events not yet
acknowledged are read again after a bot restart, so results that arrive while the bot is down are
still delivered. A record per job (``<prefix>:jobs``) keeps what was submitted until the bot has
delivered the outcome, which lets the watchdog run a job again when it vanished with its worker.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.config import RedisConfig
from bot.distributed.health import ClusterHealth, read_health
from bot.distributed.protocol import (
    JOB_FUNCTION,
    JobMessage,
    Keys,
    WireEvent,
    dumps,
    interrupted_message,
    loads,
    png_image,
)
from bot.jobs import JobOutput
from omost_engine.engine import ChatResult, RenderResult
from omost_engine.errors import OmostError
from omost_engine.params import RenderParams

if TYPE_CHECKING:
    from arq.connections import ArqRedis

try:  # the redis package is the optional extra; without it this module is never used
    from redis.exceptions import RedisError
except ModuleNotFoundError:  # pragma: no cover
    RedisError = OSError  # type: ignore[misc,assignment]

GROUP = "bot"  # the consumer group the bot reads the event stream with
ARQ_IN_PROGRESS = "arq:in-progress:"
CANCEL_TTL_S = 86_400
WATCHDOG = "watchdog"  # the ``worker`` of events the bot itself writes


@dataclass
class _Watch:
    """What the watchdog remembers about one job between two looks."""

    missing_since: float | None = None  # neither queued nor running nor finished
    no_worker_since: float | None = None
    requeue_noted: int = 0  # the attempt whose loss the user was already told about


@dataclass
class _Record:
    job_id: str
    arq_id: str
    queue: str
    request: dict[str, Any]
    submitted_ns: int
    runs: int = 1  # times put into arq's queue (the watchdog puts vanished jobs back)
    attempt: int = 0  # highest attempt a worker started
    watch: _Watch = field(default_factory=_Watch)

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "arq_id": self.arq_id, "queue": self.queue, "request": self.request,
                "submitted_ns": self.submitted_ns, "runs": self.runs, "attempt": self.attempt}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Record:
        return cls(job_id=data["job_id"], arq_id=data["arq_id"], queue=data["queue"], request=data["request"],
                   submitted_ns=int(data["submitted_ns"]), runs=int(data.get("runs", 1)),
                   attempt=int(data.get("attempt", 0)))


class RedisJobClient:
    """One bot's connection to the shared queue. Not thread-safe: use it from the bot's event loop."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self._redis: ArqRedis | None = None
        self._records: dict[str, _Record] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # recently finished jobs: drop late events
        self._pending_first = True  # after a (re)start, first read what was delivered but not acknowledged
        self._pending_cursor = "0"

    @property
    def redis(self) -> ArqRedis:
        if self._redis is None:
            raise RuntimeError("the Redis job client is not connected")
        return self._redis

    async def connect(self) -> None:
        from arq.connections import RedisSettings, create_pool
        from redis.exceptions import RedisError, ResponseError

        settings = RedisSettings.from_dsn(self.config.url)
        settings.conn_retries, settings.conn_retry_delay = 1, 0.5  # type: ignore[assignment]  # a user is waiting
        try:
            self._redis = await create_pool(settings, job_serializer=dumps, job_deserializer=loads,
                                            default_queue_name=self.keys.queue(self.config.queue))
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self._redis.xgroup_create(self.keys.events, GROUP, id="0", mkstream=True)
            stored = await self._redis.hgetall(self.keys.jobs)
        except (OSError, RedisError) as exc:
            raise OmostError(f"cannot reach Redis at {self.config.url}: {exc}", parameter="redis_url",
                             value=self.config.url, allowed="a reachable Redis server") from exc
        self._records = {}
        for raw in stored.values():
            record = _Record.from_json(loads(raw))
            self._records[record.job_id] = record
        self._pending_first = True
        self._pending_cursor = "0"

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None

    # -- jobs ------------------------------------------------------------------------------------

    @property
    def outstanding(self) -> list[str]:
        """Jobs submitted (by this bot, before or after a restart) whose outcome is not yet delivered."""
        return sorted(self._records, key=lambda j: self._records[j].submitted_ns)

    def user_of(self, job_id: str) -> int:
        record = self._records.get(job_id)
        return int(record.request.get("user_id", 0)) if record else 0

    async def submit(self, message: JobMessage, *, queue: str | None = None) -> None:
        if message.job_id in self._records:
            raise OmostError(f"job {message.job_id} is already queued", parameter="job_id", value=message.job_id)
        now_ns = time.time_ns()
        # arq breaks score ties by member name: a time prefix keeps same-millisecond jobs in order.
        record = _Record(job_id=message.job_id, arq_id=f"{now_ns:016x}.{message.job_id}",
                         queue=queue or self.config.queue, request=message.to_json(), submitted_ns=now_ns)
        await self._enqueue(record)

    async def _enqueue(self, record: _Record) -> None:
        self._records[record.job_id] = record
        await self.redis.hset(self.keys.jobs, record.job_id, dumps(record.to_json()))
        job = await self.redis.enqueue_job(
            JOB_FUNCTION, record.request, _job_id=record.arq_id, _queue_name=self.keys.queue(record.queue),
            # A job put back keeps its place at the front: its score is its first submit time.
            _defer_until=datetime.fromtimestamp(record.submitted_ns / 1e9, tz=UTC) if record.runs > 1 else None,
            _job_try=record.attempt + 1 if record.runs > 1 else None,
        )
        if job is None:
            raise OmostError(f"job {record.job_id} could not be queued: its id is taken", parameter="job_id",
                             value=record.job_id)

    async def cancel(self, job_id: str) -> bool:
        """Stop a job wherever it is. True when it was still waiting (it will never start)."""
        record = self._records.get(job_id)
        if record is None:
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.cancelled(record.arq_id), b"1", ex=CANCEL_TTL_S)
            pipe.publish(self.keys.cancel_channel, record.arq_id)
            await pipe.execute()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(ARQ_IN_PROGRESS + record.arq_id)
            pipe.zrem(self.keys.queue(record.queue), record.arq_id)
            in_progress, removed = await pipe.execute()
        if removed and not in_progress:
            await self._say(record, "cancelled", reason="cancelled before a worker took it")
            return True
        return False

    def run_id(self, job_id: str) -> str | None:
        """The arq id of the job's current run (the key of its result, lease and cancel flag)."""
        record = self._records.get(job_id)
        return record.arq_id if record else None

    # -- events ----------------------------------------------------------------------------------

    async def read_events(self, *, block_s: float = 1.0, count: int = 100) -> list[WireEvent]:
        """The next events for outstanding jobs, oldest first. Acknowledge each with ``ack``."""
        if self._pending_first:
            reply = await self.redis.xreadgroup(GROUP, self.config.consumer, {self.keys.events: self._pending_cursor},
                                                count=count)
            entries = reply[0][1] if reply else []
            if entries:  # the next look starts after these, so entries left unacknowledged are not looped on
                self._pending_cursor = _text(entries[-1][0])
            else:
                self._pending_first = False
        if not self._pending_first:
            reply = await self.redis.xreadgroup(GROUP, self.config.consumer, {self.keys.events: ">"}, count=count,
                                                block=max(1, int(block_s * 1000)))
            entries = reply[0][1] if reply else []
        events, stale = [], []
        for stream_id, fields in entries:
            if not fields:  # a pending entry deleted meanwhile: nothing left to deliver
                stale.append(WireEvent(type="failed", job_id="", stream_id=_text(stream_id)))
                continue
            event = WireEvent.decode(fields, stream_id)
            if self._accept(event):
                events.append(event)
            else:
                stale.append(event)
        await self.ack(*stale)
        return events

    def _accept(self, event: WireEvent) -> bool:
        record = self._records.get(event.job_id)
        if record is None or event.job_id in self._finished:
            return False  # not ours, or already finished (a late event from a lost worker)
        if event.type == "started":
            record.attempt = max(record.attempt, event.attempt)
            record.watch.missing_since = None
        elif event.type == "requeued":
            if event.attempt <= record.watch.requeue_noted:
                return False  # the worker and the watchdog both noticed; say it once
            record.watch.requeue_noted = event.attempt
        elif not event.terminal and event.worker != WATCHDOG and event.attempt < record.attempt:
            return False  # progress from an attempt that was given up on
        if event.terminal:
            self._finished[event.job_id] = None
            while len(self._finished) > 10_000:
                self._finished.popitem(last=False)
        return True

    async def ack(self, *events: WireEvent) -> None:
        ids = [e.stream_id for e in events if e.stream_id]
        started = {e.job_id for e in events if e.type == "started" and e.job_id in self._records}
        if not ids and not started:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            if ids:
                pipe.xack(self.keys.events, GROUP, *ids)
                pipe.xdel(self.keys.events, *ids)
            for job_id in started:  # persisted so that a restarted bot still knows how far a job got
                pipe.hset(self.keys.jobs, job_id, dumps(self._records[job_id].to_json()))
            await pipe.execute()

    async def outcome(self, job_id: str) -> JobOutput:
        """The images and texts of a finished job (after its ``result`` event), as ``bot.jobs`` has them."""
        from omost_engine.layout import Layout

        record = self._records.get(job_id)
        data = await self.redis.hgetall(self.keys.result(record.arq_id)) if record else {}
        if not data or b"meta" not in data or b"image" not in data:
            raise OmostError(f"the result of job {job_id} is no longer in Redis", parameter="job_id", value=job_id)
        meta = loads(data[b"meta"])
        chat = None
        if "chat" in meta:
            c = meta["chat"]
            chat = ChatResult(reply=c["reply"], layout=Layout.from_json(c["layout"]), model=c["model"],
                              tokens=int(c["tokens"]), seconds=float(c["seconds"]),
                              forward_passes=int(c.get("forward_passes", 0)),
                              trimmed_turns=int(c.get("trimmed_turns", 0)), notes=tuple(c.get("notes", ())))
        r = meta["render"]
        render = RenderResult(image=png_image(data[b"image"]), masks=png_image(data[b"masks"]), model=r["model"],
                              seconds=float(r["seconds"]), params=RenderParams.from_dict(r["params"]))
        return JobOutput(chat=chat, render=render, layout=Layout.from_json(meta["layout"]))

    async def forget(self, job_id: str) -> None:
        """The outcome was delivered: drop the job's record and result; stop any stray copy of it."""
        record = self._records.pop(job_id, None)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.jobs, job_id)
            if record is not None:
                pipe.delete(self.keys.result(record.arq_id))
                pipe.set(self.keys.cancelled(record.arq_id), b"1", ex=CANCEL_TTL_S)
                pipe.publish(self.keys.cancel_channel, record.arq_id)
            await pipe.execute()

    # -- watchdog --------------------------------------------------------------------------------

    async def health(self) -> ClusterHealth:
        return await read_health(self.redis, self.keys)

    async def watch(self) -> None:
        """Look for jobs whose worker died or that no worker can take; call it between event reads.

        A job that is neither queued, taken, nor finished on two looks in a row (with the events
        read in between, so a result cannot be in flight) vanished with its worker: it is queued
        again until it used up its attempts, then failed. A job that waits while no worker serves
        its queue fails after ``no_worker_timeout_s``. Either way the user hears of it.
        """
        records = [r for r in self._records.values() if r.job_id not in self._finished]
        if not records:
            return
        health = await self.health()
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in records:
                pipe.exists(self.keys.running(r.arq_id), ARQ_IN_PROGRESS + r.arq_id)
                pipe.zscore(self.keys.queue(r.queue), r.arq_id)
            replies = await pipe.execute()
        for r, taken, score in zip(records, replies[0::2], replies[1::2], strict=True):
            if r.job_id not in self._records or r.job_id in self._finished:
                continue
            w = r.watch
            if taken:
                w.missing_since = w.no_worker_since = None
            elif score is not None:
                w.missing_since = None
                if r.attempt > w.requeue_noted:  # it had started: its worker stopped, it waits again
                    w.requeue_noted = r.attempt
                    await self._say(r, "requeued", reason="the GPU worker running it stopped")
                if health.serving(r.queue):
                    w.no_worker_since = None
                elif w.no_worker_since is None:
                    w.no_worker_since = now
                elif now - w.no_worker_since >= self.config.no_worker_timeout_s:
                    await self.redis.zrem(self.keys.queue(r.queue), r.arq_id)
                    await self._say(r, "failed",
                                    message=f"no GPU worker is online for queue {r.queue!r} "
                                            f"(waited {now - w.no_worker_since:.0f} s); try again later")
            elif w.missing_since is None:
                w.missing_since = now
            else:
                await self._requeue_or_fail(r)

    async def _requeue_or_fail(self, r: _Record) -> None:
        r.watch.missing_since = None
        max_attempts = int(r.request.get("max_attempts", 3))
        if r.attempt >= max_attempts:
            await self._say(r, "failed",
                            message=interrupted_message(r.attempt))
            return
        r.runs += 1
        r.arq_id = f"{r.submitted_ns:016x}.{r.job_id}.{r.runs}"
        await self._enqueue(r)
        if r.attempt > r.watch.requeue_noted:
            r.watch.requeue_noted = r.attempt
            await self._say(r, "requeued", reason="the GPU worker running it stopped")

    async def _say(self, record: _Record, type_: str, **data: Any) -> None:
        """Write an event of the bot's own into the stream, so it is handled like a worker's."""
        event = WireEvent(type=type_, job_id=record.job_id, attempt=record.attempt,  # type: ignore[arg-type]
                         worker=WATCHDOG, data=data)
        await self.redis.xadd(self.keys.events, event.encode())  # type: ignore[arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
