"""The bot's side of the Redis job path: submit, cancel, read events, fetch results, watch for lost jobs.

Jobs go into a stream per queue (first in, first out across all workers), read by the workers'
consumer group; a job a worker took stays in the group's pending entries until that worker
acknowledges it, and is claimed by another worker when its worker dies (see ``bot.distributed.worker``).
Workers answer through one event stream that the bot reads with its own consumer group: events not
yet acknowledged are read again after a bot restart, so results that arrive while the bot is down
are still delivered. A record per job (``<prefix>:jobs``) keeps what was submitted until the bot has
delivered the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.config import RedisConfig
from bot.distributed.health import ClusterHealth, read_health
from bot.distributed.protocol import (
    WORKER_GROUP,
    EventType,
    JobMessage,
    Keys,
    WireEvent,
    dumps,
    job_entry,
    loads,
    png_bytes,
    png_image,
)
from bot.jobs import JobOutput
from omost_engine.engine import ChatResult, RenderResult
from omost_engine.errors import OmostError
from omost_engine.params import RenderParams

if TYPE_CHECKING:
    from redis.asyncio import Redis

try:  # the redis package is the optional extra; without it this module is never used
    from redis.exceptions import RedisError as RedisError  # re-exported for bot.distributed.backend
except ModuleNotFoundError:  # pragma: no cover
    RedisError = OSError  # type: ignore[misc,assignment]  # the stand-in when the extra is not installed

GROUP = "bot"  # the consumer group the bot reads the event stream with
CANCEL_TTL_S = 86_400
BASE_TTL_S = 86_400  # an upscale's base waits this long for a worker (then the render runs in full)
WATCHDOG = "watchdog"  # the ``worker`` of events the bot itself writes

# Delete a job's entry only while no worker has taken it (it is not pending): 1 when it was waiting.
CANCEL_WAITING_SCRIPT = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) > 0 then return 0 end
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


@dataclass
class _Watch:
    """What the watchdog remembers about one job between two looks."""

    missing_since: float | None = None  # its entry is gone from the stream, and no outcome arrived
    no_worker_since: float | None = None
    lost_noted: int = 0  # the attempt whose worker the watchdog saw gone
    requeue_noted: int = 0  # the attempt whose loss the user was already told about


@dataclass
class _Record:
    job_id: str
    run_id: str  # names the job's result and cancel flag
    entry_id: str  # the job's entry in its queue's stream
    queue: str
    request: dict[str, Any]
    submitted_ns: int
    attempt: int = 0  # highest attempt a worker started
    watch: _Watch = field(default_factory=_Watch)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "entry_id": self.entry_id,
            "queue": self.queue,
            "request": self.request,
            "submitted_ns": self.submitted_ns,
            "attempt": self.attempt,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Record:
        # "arq_id": the run id in records written before the jobs moved to a stream.
        return cls(
            job_id=data["job_id"],
            run_id=data.get("run_id") or data.get("arq_id", ""),
            entry_id=data.get("entry_id", ""),
            queue=data["queue"],
            request=data["request"],
            submitted_ns=int(data["submitted_ns"]),
            attempt=int(data.get("attempt", 0)),
        )


class RedisJobClient:
    """One bot's connection to the shared queue. Not thread-safe: use it from the bot's event loop."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self._redis: Redis | None = None
        self._records: dict[str, _Record] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()  # recently finished jobs: drop late events
        self._pending_first = True  # after a (re)start, first read what was delivered but not acknowledged
        self._pending_cursor = "0"

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("the Redis job client is not connected")
        return self._redis

    async def connect(self) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(self.config.url, socket_connect_timeout=5)
        try:
            await self._create_groups()
            stored = await self._redis.hgetall(self.keys.jobs)  # type: ignore[misc]  # redis-py types its asyncio commands as Awaitable[T] | T
        except (OSError, RedisError) as exc:
            await self.close()
            raise OmostError(
                f"cannot reach Redis at {self.config.url}: {exc}",
                parameter="redis_url",
                value=self.config.url,
                allowed="a reachable Redis server",
            ) from exc
        self._records = {}
        for raw in stored.values():
            record = _Record.from_json(loads(raw))
            self._records[record.job_id] = record
        self._pending_first = True
        self._pending_cursor = "0"

    async def _create_groups(self) -> None:
        """The event stream's group and our queue's worker group (again after Redis lost its data)."""
        from redis.exceptions import ResponseError

        for stream, group in ((self.keys.events, GROUP), (self.keys.queue(self.config.queue), WORKER_GROUP)):
            with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                await self.redis.xgroup_create(stream, group, id="0", mkstream=True)

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
            raise OmostError(
                f"job {message.job_id} is already queued", parameter="job_id", value=message.job_id
            )
        now_ns = time.time_ns()
        record = _Record(
            job_id=message.job_id,
            run_id=f"{now_ns:016x}.{message.job_id}",
            entry_id="",
            queue=queue or self.config.queue,
            request=message.to_json(),
            submitted_ns=now_ns,
        )
        base = message.spec.base
        if (
            base is not None
        ):  # large bytes go beside the message, under the run's key, before the job is visible
            png = await asyncio.to_thread(png_bytes, base)
            await self.redis.set(self.keys.base(record.run_id), png, ex=BASE_TTL_S)
        entry_id = await self.redis.xadd(
            self.keys.queue(record.queue),
            job_entry(record.run_id, record.request),  # type: ignore[arg-type]  # redis-py wants an invariant dict[FieldT, EncodableT] of fields
        )
        record.entry_id = _text(entry_id)
        self._records[record.job_id] = record
        await self.redis.hset(self.keys.jobs, record.job_id, dumps(record.to_json()))  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T results, str-only hash values

    async def cancel(self, job_id: str) -> bool:
        """Stop a job wherever it is. True when it was still waiting (it will never start)."""
        record = self._records.get(job_id)
        if record is None:
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.cancelled(record.run_id), b"1", ex=CANCEL_TTL_S)
            pipe.publish(self.keys.cancel_channel, record.run_id)
            await pipe.execute()
        removed = record.entry_id and await self.redis.eval(  # type: ignore[misc]  # redis-py types its asyncio commands as Awaitable[T] | T
            CANCEL_WAITING_SCRIPT, 1, self.keys.queue(record.queue), WORKER_GROUP, record.entry_id
        )
        if removed:
            await self._say(record, "cancelled", reason="cancelled before a worker took it")
            return True
        return False

    def run_id(self, job_id: str) -> str | None:
        """The id of the job's run (the key of its result and cancel flag)."""
        record = self._records.get(job_id)
        return record.run_id if record else None

    # -- events ----------------------------------------------------------------------------------

    async def read_events(self, *, block_s: float = 1.0, count: int = 100) -> list[WireEvent]:
        """The next events for outstanding jobs, oldest first. Acknowledge each with ``ack``."""
        if self._pending_first:
            reply = await self.redis.xreadgroup(
                GROUP, self.config.consumer, {self.keys.events: self._pending_cursor}, count=count
            )
            entries = reply[0][1] if reply else []
            if entries:  # the next look starts after these, so entries left unacknowledged are not looped on
                self._pending_cursor = _text(entries[-1][0])
            else:
                self._pending_first = False
        if not self._pending_first:
            try:
                reply = await self.redis.xreadgroup(
                    GROUP,
                    self.config.consumer,
                    {self.keys.events: ">"},
                    count=count,
                    block=max(1, int(block_s * 1000)),
                )
            except RedisError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_groups()  # Redis was flushed: the watchdog tells the users of lost jobs
                reply = []
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
                pipe.hset(self.keys.jobs, job_id, dumps(self._records[job_id].to_json()))  # type: ignore[arg-type]  # redis-py types a hash value as str; bytes are accepted
            await pipe.execute()

    async def outcome(self, job_id: str) -> JobOutput:
        """The images and texts of a finished job (after its ``result`` event), as ``bot.jobs`` has them."""
        from omost_engine.layout import Layout

        record = self._records.get(job_id)
        data = await self.redis.hgetall(self.keys.result(record.run_id)) if record else {}  # type: ignore[misc]  # redis-py types its asyncio commands as Awaitable[T] | T
        if not data or b"meta" not in data or b"image" not in data:
            raise OmostError(
                f"the result of job {job_id} is no longer in Redis", parameter="job_id", value=job_id
            )
        meta = loads(data[b"meta"])
        chat = None
        if "chat" in meta:
            c = meta["chat"]
            chat = ChatResult(
                reply=c["reply"],
                layout=Layout.from_json(c["layout"]),
                model=c["model"],
                tokens=int(c["tokens"]),
                seconds=float(c["seconds"]),
                forward_passes=int(c.get("forward_passes", 0)),
                trimmed_turns=int(c.get("trimmed_turns", 0)),
                notes=tuple(c.get("notes", ())),
            )
        r = meta["render"]
        seeds = tuple(int(seed) for seed in r.get("seeds", ()))
        images = tuple(png_image(data[f"image:{n}".encode()]) for n in range(len(seeds)) if len(seeds) > 1)
        render = RenderResult(
            image=png_image(data[b"image"]),
            masks=png_image(data[b"masks"]),
            model=r["model"],
            seconds=float(r["seconds"]),
            params=RenderParams.from_dict(r["params"]),
            images=images,
            seeds=seeds if images else (),
            batched=bool(r.get("batched", False)),
        )
        return JobOutput(chat=chat, render=render, layout=Layout.from_json(meta["layout"]))

    async def forget(self, job_id: str) -> None:
        """The outcome was delivered: drop the job's record, result and entry; stop any stray copy of it."""
        record = self._records.pop(job_id, None)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.jobs, job_id)
            if record is not None:
                pipe.delete(self.keys.result(record.run_id), self.keys.base(record.run_id))
                pipe.set(self.keys.cancelled(record.run_id), b"1", ex=CANCEL_TTL_S)
                pipe.publish(self.keys.cancel_channel, record.run_id)
                if record.entry_id:  # no worker may claim it any more (a worker that held it stops silently)
                    pipe.xack(self.keys.queue(record.queue), WORKER_GROUP, record.entry_id)
                    pipe.xdel(self.keys.queue(record.queue), record.entry_id)
            await pipe.execute()

    # -- watchdog --------------------------------------------------------------------------------

    async def health(self) -> ClusterHealth:
        return await read_health(self.redis, self.keys)

    async def watch(self) -> None:
        """Tell users about jobs whose worker died or that no worker can take; call it between event reads.

        Running jobs again is the workers' part (they claim a dead worker's pending entries); the bot
        only says so when it sees the job's worker gone. A job waiting while no worker serves its
        queue fails after ``no_worker_timeout_s``. A job whose entry left the stream without an
        outcome (Redis flushed or evicted it), on two looks with the events read in between, fails.
        """
        records = [r for r in self._records.values() if r.job_id not in self._finished]
        if not records:
            return
        health = await self.health()
        alive = {w.worker_id for w in health.alive}
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in records:
                stream, entry = self.keys.queue(r.queue), r.entry_id or "0-0"
                pipe.xrange(stream, entry, entry, count=1)
                pipe.xpending_range(stream, WORKER_GROUP, entry, entry, 1)
            replies = await pipe.execute(raise_on_error=False)  # NOGROUP: the stream is gone, so is the entry
        replies = [[] if isinstance(reply, Exception) else reply for reply in replies]
        for r, entry, pending in zip(records, replies[0::2], replies[1::2], strict=True):
            if r.job_id not in self._records or r.job_id in self._finished:
                continue
            w = r.watch
            if not entry:
                if w.missing_since is None:
                    w.missing_since = now
                else:
                    await self._say(
                        r,
                        "failed",
                        message="the job was lost from Redis (flushed or evicted) before it ended; try again",
                    )
                continue
            w.missing_since = None
            owner = _text(pending[0]["consumer"]) if pending else None
            if owner is not None and owner not in alive and r.attempt > w.lost_noted:
                w.lost_noted = r.attempt  # it waits for the next free worker to claim it
                await self._say(r, "requeued", reason="the GPU worker running it stopped")
            if health.serving(r.queue):
                w.no_worker_since = None
            elif w.no_worker_since is None:
                w.no_worker_since = now
            elif now - w.no_worker_since >= self.config.no_worker_timeout_s:
                await self._say(
                    r,
                    "failed",
                    message=f"no GPU worker is online for queue {r.queue!r} "
                    f"(waited {now - w.no_worker_since:.0f} s); try again later",
                )

    async def _say(self, record: _Record, type_: EventType, **data: Any) -> None:
        """Write an event of the bot's own into the stream, so it is handled like a worker's."""
        event = WireEvent(
            type=type_,
            job_id=record.job_id,
            attempt=record.attempt,
            worker=WATCHDOG,
            data=data,
        )
        await self.redis.xadd(self.keys.events, event.encode())  # type: ignore[arg-type]  # redis-py wants an invariant dict[FieldT, EncodableT] of fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
