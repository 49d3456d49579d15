"""Health of the distributed setup: workers seen, their models and jobs, and the queues.

Workers write a heartbeat record (with a time-to-live) and their id into a "seen" set; a worker
whose record expired is listed as gone with the time it was last seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.distributed.protocol import Keys, loads

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from bot.jobs import JobBackend

SEEN_FOR_S = 7 * 86_400  # workers not heard from for a week drop out of the list


@dataclass(frozen=True, kw_only=True)
class WorkerHealth:
    worker_id: str
    alive: bool
    last_seen: float
    queue: str = ""
    engine: str = ""
    host: str = ""
    models: dict[str, str] = field(default_factory=dict)
    concurrency: int = 0
    running: tuple[dict[str, Any], ...] = ()
    done: int = 0
    failed: int = 0

    @property
    def free_slots(self) -> int:
        return max(0, self.concurrency - len(self.running)) if self.alive else 0


@dataclass(frozen=True, kw_only=True)
class ClusterHealth:
    workers: tuple[WorkerHealth, ...]
    queued: dict[str, int]  # queue name -> jobs waiting for a worker
    redis_ok: bool = True

    @property
    def alive(self) -> tuple[WorkerHealth, ...]:
        return tuple(w for w in self.workers if w.alive)

    def serving(self, queue: str) -> tuple[WorkerHealth, ...]:
        return tuple(w for w in self.alive if w.queue == queue)

    def capacity(self, queue: str) -> int:
        return sum(w.concurrency for w in self.serving(queue))

    def lines(self) -> list[str]:
        """A short text report (for ``/omost status`` and ``omost-bot workers``)."""
        now = time.time()
        alive = self.alive
        lines = [
            f"workers: {len(alive)} online, {len(self.workers) - len(alive)} gone; "
            + (", ".join(f"queue {q}: {n} waiting" for q, n in sorted(self.queued.items())) or "no queues")
        ]
        for w in self.workers:
            models = ", ".join(f"{k} {v}" for k, v in sorted(w.models.items())) or "models unknown"
            if w.alive:
                jobs = (
                    ", ".join(
                        f"{r['job_id']} ({r.get('stage', '?')}, try {r.get('attempt', 1)})" for r in w.running
                    )
                    or "idle"
                )
                lines.append(
                    f"- {w.worker_id} on {w.host or '?'}: queue {w.queue}, {models}; "
                    f"{len(w.running)}/{w.concurrency} busy: {jobs}; {w.done} done, {w.failed} failed"
                )
            else:
                lines.append(f"- {w.worker_id}: gone, last seen {now - w.last_seen:.0f} s ago")
        return lines


async def read_health(redis: Redis, keys: Keys) -> ClusterHealth:
    """Read every worker's record and every queue's length in two round trips."""
    await redis.zremrangebyscore(keys.workers, "-inf", time.time() - SEEN_FOR_S)
    seen = await redis.zrange(keys.workers, 0, -1, withscores=True)
    ids = [(raw.decode() if isinstance(raw, bytes) else raw, score) for raw, score in seen]
    records = await redis.mget([keys.worker(worker_id) for worker_id, _ in ids]) if ids else []
    workers = []
    for (worker_id, last_seen), record in zip(ids, records, strict=True):
        if record is None:
            workers.append(WorkerHealth(worker_id=worker_id, alive=False, last_seen=last_seen))
            continue
        data = loads(record)
        workers.append(
            WorkerHealth(
                worker_id=worker_id,
                alive=True,
                last_seen=float(data.get("ts", last_seen)),
                queue=str(data.get("queue", "")),
                engine=str(data.get("engine", "")),
                host=str(data.get("host", "")),
                models={str(k): str(v) for k, v in (data.get("models") or {}).items()},
                concurrency=int(data.get("concurrency", 0)),
                running=tuple(data.get("running") or ()),
                done=int(data.get("done", 0)),
                failed=int(data.get("failed", 0)),
            )
        )
    queues = sorted({w.queue for w in workers if w.queue})
    queued: dict[str, int] = {}
    for queue in queues:
        total = await redis.xlen(keys.queue(queue))
        busy = sum(len(w.running) for w in workers if w.alive and w.queue == queue)
        queued[queue] = max(0, total - busy)  # a running job's entry stays in the stream until it ends
    return ClusterHealth(workers=tuple(workers), queued=queued)


async def status_lines(backend: JobBackend) -> list[str]:
    """The text of ``/omost status`` for any ``JobBackend``: the bot's queue, then the workers.

    The in-process queue has one worker, this process; the Redis backend adds what the workers
    report (models, jobs, last heartbeat). Redis being down is reported, not raised.
    """
    snapshot = backend.snapshot()
    running = sum(1 for _, position in snapshot if position == 0)
    lines = [f"queue: {running} running, {len(snapshot) - running} waiting in the bot"]
    read = getattr(backend, "health", None)
    if read is None:
        return [*lines, "workers: this process (in-process queue)"]
    try:
        cluster: ClusterHealth = await read()
    except Exception as exc:  # any Redis or network failure: the command must still answer
        return [*lines, f"workers: Redis cannot be read: {exc}"]
    return [*lines, *cluster.lines()]
