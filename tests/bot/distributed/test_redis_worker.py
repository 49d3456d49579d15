"""The worker in this process (real Redis streams, scripted engine): what it says about odd jobs, how it
claims a dead worker's job, how it throttles progress, how it shows up in health, and the
``omost-bot workers`` command."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis_harness import wait_until, wait_until_async

from bot.cli import main
from bot.distributed.backend import RedisJobBackend
from bot.distributed.client import RedisConfig, RedisJobClient
from bot.distributed.health import read_health, status_lines
from bot.distributed.protocol import WORKER_GROUP, JobMessage, Keys, WireEvent, job_entry, loads
from bot.distributed.worker import EventOutbox, GpuWorker, WorkerConfig, build_engine
from bot.jobs import Finished, InProcessJobBackend, JobEvent, JobSpec, Progress, Started
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.testing.scripted_engine import ScriptedEngine


def _local_worker(redis_url: str, prefix: str, **options: object) -> GpuWorker:
    config = WorkerConfig(
        redis_url=redis_url,
        prefix=prefix,
        **{
            "worker_id": "local",
            "heartbeat_s": 0.1,  # type: ignore[arg-type]
            "lease_s": 1.0,
            **options,
        },
    )
    return GpuWorker(
        ScriptedEngine(chat_seconds=0.05, render_seconds=0.05),
        config,
        models={"llm": "tiny", "sdxl": "tiny-xl"},
    )


@pytest.fixture
async def served(redis_url: str) -> AsyncIterator[tuple[GpuWorker, Redis, Keys]]:
    """A worker task on a fresh prefix, and a Redis client to put raw jobs in front of it."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    worker = _local_worker(redis_url, prefix)
    task = asyncio.create_task(worker.run())
    pool = Redis.from_url(redis_url)
    keys = Keys(prefix)
    await wait_until_async(lambda: pool.exists(keys.worker("local")), what="the worker's first heartbeat")
    yield worker, pool, keys
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.aclose()


async def _enqueue(pool: Redis, keys: Keys, run_id: str, request: dict, *, queue: str = "default") -> str:
    entry_id = await pool.xadd(keys.queue(queue), job_entry(run_id, request))  # type: ignore[arg-type]
    return entry_id.decode()


async def _events(pool: Redis, keys: Keys, job_id: str, *, until: str) -> list[WireEvent]:
    found: list[WireEvent] = []

    async def arrived() -> bool:
        found[:] = [WireEvent.decode(fields, sid) for sid, fields in await pool.xrange(keys.events)]
        found[:] = [e for e in found if e.job_id == job_id]
        return any(e.type == until for e in found)

    await wait_until_async(arrived, what=f"a {until} event for job {job_id}")
    return found


def _message(job_id: int, **options: object) -> dict:
    spec = JobSpec(
        job_id=job_id,
        prompt=f"a quiet field {job_id}",
        history=(),
        llm=None,
        llm_params=LLMParams(),
        render_params=RenderParams(width=256, height=256, steps=3),
    )
    return JobMessage(spec=spec, **options).to_json()  # type: ignore[arg-type]


async def test_a_job_from_the_stream_to_the_result_hash(served: tuple[GpuWorker, Redis, Keys]) -> None:
    worker, pool, keys = served
    await _enqueue(pool, keys, "a1", _message(1))
    events = await _events(pool, keys, "1", until="result")
    assert [e.type for e in events if e.type not in ("llm", "render")] == [
        "started",
        "stage",
        "chat",
        "stage",
        "result",
    ]
    stored = await pool.hgetall(keys.result("a1"))
    meta = loads(stored[b"meta"])
    assert meta["worker"] == "local" and meta["attempt"] == 1 and len(meta["layout"]) == 3
    assert stored[b"image"].startswith(b"\x89PNG") and stored[b"masks"].startswith(b"\x89PNG")
    await wait_until(lambda: worker.done == 1, what="the done counter")
    # Acknowledged and removed when the job ended: no worker can claim it again.
    await wait_until_async(lambda: _gone(pool, keys.queue()), what="the entry to leave the stream")
    assert (await pool.xpending(keys.queue(), WORKER_GROUP))["pending"] == 0


async def _gone(pool: Redis, stream: str) -> bool:
    return await pool.xlen(stream) == 0


async def test_odd_jobs_get_a_clear_failure(served: tuple[GpuWorker, Redis, Keys]) -> None:
    _, pool, keys = served
    await _enqueue(pool, keys, "a2", {"v": 99, "job_id": 2})
    (failed,) = [e for e in await _events(pool, keys, "2", until="failed") if e.type == "failed"]
    assert "not valid" in failed.data["message"] and "version 99" in failed.data["message"]

    # Cancelled before any worker took it: it ends at once.
    await pool.set(keys.cancelled("a4"), b"1")
    await _enqueue(pool, keys, "a4", _message(4))
    assert [e.type for e in await _events(pool, keys, "4", until="cancelled")] == ["started", "cancelled"]
    await wait_until_async(lambda: _gone(pool, keys.queue()), what="both entries to leave the stream")


async def test_a_dead_workers_jobs_are_claimed_with_the_delivery_count_as_attempt(redis_url: str) -> None:
    """Two jobs that two workers read and then died under (delivered twice, never acknowledged): after one
    lease a live worker claims them. Two runs allowed: the user is told, nothing runs; three: it runs."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    pool = Redis.from_url(redis_url)
    stream = keys.queue()
    await pool.xgroup_create(stream, WORKER_GROUP, id="0", mkstream=True)
    spent = await _enqueue(pool, keys, "a3", _message(3, max_attempts=2))
    again = await _enqueue(pool, keys, "a6", _message(6, max_attempts=3))
    await pool.xreadgroup(WORKER_GROUP, "dead-1", {stream: ">"}, count=2)  # delivery 1
    await pool.xclaim(
        stream, WORKER_GROUP, "dead-2", min_idle_time=0, message_ids=[spent, again]
    )  # delivery 2
    worker = _local_worker(redis_url, prefix)
    task = asyncio.create_task(worker.run())
    try:
        events = await _events(pool, keys, "3", until="failed")
        assert [e.type for e in events] == ["failed"] and events[0].attempt == 3
        assert "stopped 2 times" in events[0].data["message"]
        events = await _events(pool, keys, "6", until="result")
        assert events[0].type == "started" and {e.attempt for e in events} == {3}
        assert {e.worker for e in events} == {"local"}
        await wait_until_async(lambda: _gone(pool, stream), what="both entries to leave the stream")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pool.aclose()


async def test_health_lists_live_and_gone_workers(
    redis_url: str, served: tuple[GpuWorker, Redis, Keys], capsys: pytest.CaptureFixture[str]
) -> None:
    _, pool, keys = served
    await pool.zadd(keys.workers, {"old-box": time.time() - 3600, "ancient": 1.0e9})  # no live records

    health = await read_health(pool, keys)
    (live,) = health.alive
    assert (live.worker_id, live.queue, live.models, live.concurrency) == (
        "local",
        "default",
        {"llm": "tiny", "sdxl": "tiny-xl"},
        1,
    )
    assert health.capacity("default") == 1 and health.capacity("other") == 0
    lines = health.lines()
    assert lines[0].startswith("workers: 1 online, 1 gone")
    assert any(line.startswith("- local on ") and "llm tiny" in line for line in lines)
    assert any(line.startswith("- old-box: gone, last seen 36") for line in lines)
    assert not any("ancient" in line for line in lines)  # not heard from for over a week: dropped

    assert await asyncio.to_thread(main, ["workers", "--redis-url", redis_url, "--prefix", keys.prefix]) == 0
    out = capsys.readouterr().out
    assert "1 online" in out and "- local on " in out


def test_worker_command_needs_a_redis_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OMOST_REDIS_URL", raising=False)
    assert main(["worker", "--engine", "scripted"]) == 2
    assert "a Redis URL is needed" in capsys.readouterr().err
    assert main(["worker", "--engine", "scripted", "--redis-url", "redis://x", "--lease", "0.1"]) == 2
    assert "lease_s" in capsys.readouterr().err
    # Unreachable Redis: one line, no traceback.
    assert main(["worker", "--engine", "scripted", "--redis-url", "redis://127.0.0.1:1/0"]) == 1
    err = capsys.readouterr().err
    assert "error: Redis at redis://127.0.0.1:1/0" in err and "Traceback" not in err


async def test_outbox_keeps_order_and_thins_out_progress() -> None:
    sent: list[JobEvent] = []

    async def send(event: JobEvent) -> None:
        sent.append(event)
        await asyncio.sleep(0)

    outbox = EventOutbox(send, interval=0.05)
    outbox.put(Started(1, "llm"))
    for tokens in range(1, 201):
        outbox.put(Progress(1, LLMProgress(tokens=tokens, tokens_per_second=1.0, text="x" * tokens)))
        if tokens % 20 == 0:
            await asyncio.sleep(0.01)
    outbox.put(Started(1, "render"))
    outbox.put(Progress(1, RenderProgress(step=1, total=2)))
    outbox.put(Progress(1, RenderProgress(step=2, total=2)))
    await outbox.close()

    kinds = [type(e).__name__ for e in sent]
    assert kinds[0] == "Started" and kinds.count("Started") == 2
    llm = [e.progress.tokens for e in sent if isinstance(e, Progress) and isinstance(e.progress, LLMProgress)]
    assert 1 <= len(llm) < 50 and llm[-1] == 200 and llm == sorted(llm)  # thinned, newest last
    render = [e for e in sent if isinstance(e, Progress) and isinstance(e.progress, RenderProgress)]
    assert render[-1].progress.step == 2  # type: ignore[union-attr]
    assert sent.index(render[0]) > kinds.index("Started", 1)  # never ahead of the event before it
    assert not any(isinstance(e, Finished) for e in sent)


async def test_status_text_for_both_backends(redis_url: str, served: tuple[GpuWorker, Redis, Keys]) -> None:
    _, _, keys = served
    local = InProcessJobBackend(ScriptedEngine())
    assert await status_lines(local) == [
        "queue: 0 running, 0 waiting in the bot",
        "workers: this process (in-process queue)",
    ]
    remote = RedisJobBackend(RedisConfig(url=redis_url, prefix=keys.prefix))
    lines = await status_lines(remote)
    await remote.close()
    assert lines[0] == "queue: 0 running, 0 waiting in the bot"
    assert lines[1].startswith("workers: 1 online") and lines[2].startswith("- local on ")
    down = RedisJobBackend(RedisConfig(url="redis://127.0.0.1:1/0"))
    (_, failure) = await status_lines(down)
    assert failure.startswith("workers: Redis cannot be read: cannot reach Redis at redis://127.0.0.1:1/0")


async def test_watchdog_tells_of_a_gone_worker_and_of_a_vanished_job(redis_url: str) -> None:
    client = RedisJobClient(RedisConfig(url=redis_url, prefix=f"unit-{uuid.uuid4().hex[:8]}", queue="nobody"))
    await client.connect()
    try:
        spec = JobSpec(
            job_id=9, prompt="x", history=(), llm=None, llm_params=LLMParams(), render_params=RenderParams()
        )
        await client.submit(JobMessage(spec=spec, max_attempts=2))
        stream = client.keys.queue("nobody")
        # A worker takes it, says so, and dies: its entry stays pending under a worker no longer alive.
        await client.redis.xreadgroup(WORKER_GROUP, "gone-w", {stream: ">"}, count=1)
        started = WireEvent(type="started", job_id="9", attempt=1, worker="gone-w")
        await client.redis.xadd(client.keys.events, started.encode())  # type: ignore[arg-type]
        (event,) = await client.read_events(block_s=0.01)
        await client.ack(event)
        await client.watch()
        (requeued,) = await client.read_events(block_s=0.01)
        assert (requeued.type, requeued.attempt, requeued.data["reason"]) == (
            "requeued",
            1,
            "the GPU worker running it stopped",
        )
        await client.ack(requeued)
        await client.watch()  # said once per attempt
        assert await client.read_events(block_s=0.01) == []

        # Redis loses the entry: on the second look (events read in between) the user is told.
        await client.redis.delete(stream)
        await client.watch()
        assert await client.read_events(block_s=0.01) == []
        await client.watch()
        (failed,) = await client.read_events(block_s=0.01)
        assert failed.type == "failed" and "lost from Redis" in failed.data["message"]
    finally:
        await client.close()


async def test_a_worker_that_lost_its_lease_stops_and_stays_silent(
    served: tuple[GpuWorker, Redis, Keys],
) -> None:
    worker, pool, keys = served
    message = _message(5)
    message["prompt"] = "a long night {{delay=20}}"
    entry_id = await _enqueue(pool, keys, "a5", message)
    await _events(pool, keys, "5", until="stage")
    # As if this process had stalled past its lease and another worker had claimed the job meanwhile.
    await pool.xclaim(keys.queue(), WORKER_GROUP, "another", min_idle_time=0, message_ids=[entry_id])
    await wait_until(lambda: not worker.running, timeout=5, what="the worker to stop the job")
    await asyncio.sleep(0.3)  # a few heartbeats: nothing more may be said about the job
    types = [e.type for e in await _events(pool, keys, "5", until="stage")]
    assert not {"result", "failed", "cancelled", "requeued"} & set(types)
    (pending,) = await pool.xpending_range(keys.queue(), WORKER_GROUP, min="-", max="+", count=10)
    assert pending["consumer"] == b"another"  # the new owner's entry is left alone, not acknowledged


def test_real_engine_comes_from_the_workers_own_configuration(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text(
        '[bot]\nllm_endpoint = "http://10.0.0.7:8000/v1"\nsdxl = "SG161222/RealVisXL_V4.0"\ndevice = "cpu"\n'
    )
    engine, models = build_engine(argparse.Namespace(engine="real", config=str(config), scripted_seconds=0.2))
    assert models == {"llm": "http://10.0.0.7:8000/v1", "sdxl": "SG161222/RealVisXL_V4.0"}
    assert callable(engine.chat) and callable(engine.render)  # built lazily: no model is loaded yet
    scripted, names = build_engine(argparse.Namespace(engine="scripted", config=None, scripted_seconds=0.4))
    assert isinstance(scripted, ScriptedEngine) and scripted.chat_seconds == scripted.render_seconds == 0.2
    assert names == {"llm": "scripted-llm", "sdxl": "scripted-sdxl"}
