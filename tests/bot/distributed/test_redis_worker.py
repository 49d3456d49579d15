"""The worker in this process (real arq loop, real Redis, scripted engine): what it says about odd jobs,
how it throttles progress, how it shows up in health, and the ``omost-bot workers`` command."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis_harness import wait_until, wait_until_async

from bot.cli import main
from bot.distributed.backend import RedisJobBackend
from bot.distributed.client import RedisConfig, RedisJobClient
from bot.distributed.health import read_health, status_lines
from bot.distributed.protocol import JOB_FUNCTION, JobMessage, Keys, WireEvent, dumps, loads
from bot.distributed.worker import EventOutbox, GpuWorker, WorkerConfig, build_engine
from bot.jobs import Finished, InProcessJobBackend, JobEvent, JobSpec, Progress, Started
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.testing.scripted_engine import ScriptedEngine


@pytest.fixture
async def served(redis_url: str) -> AsyncIterator[tuple[GpuWorker, ArqRedis, Keys]]:
    """A worker task on a fresh prefix, and an arq pool to put raw jobs in front of it."""
    prefix = f"unit-{uuid.uuid4().hex[:8]}"
    worker = GpuWorker(ScriptedEngine(chat_seconds=0.05, render_seconds=0.05),
                       WorkerConfig(redis_url=redis_url, prefix=prefix, worker_id="local", heartbeat_s=0.1,
                                    lease_s=1.0, poll_s=0.01), models={"llm": "tiny", "sdxl": "tiny-xl"})
    task = asyncio.create_task(worker.run())
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=dumps, job_deserializer=loads)
    keys = Keys(prefix)
    await wait_until_async(lambda: pool.exists(keys.worker("local")), what="the worker's first heartbeat")
    yield worker, pool, keys
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.aclose()


async def _events(pool: ArqRedis, keys: Keys, job_id: str, *, until: str) -> list[WireEvent]:
    found: list[WireEvent] = []

    async def arrived() -> bool:
        found[:] = [WireEvent.decode(fields, sid) for sid, fields in await pool.xrange(keys.events)]
        found[:] = [e for e in found if e.job_id == job_id]
        return any(e.type == until for e in found)

    await wait_until_async(arrived, what=f"a {until} event for job {job_id}")
    return found


def _message(job_id: int, **options: object) -> dict:
    spec = JobSpec(job_id=job_id, prompt=f"a quiet field {job_id}", history=(), llm=None, llm_params=LLMParams(),
                   render_params=RenderParams(width=256, height=256, steps=3))
    return JobMessage(spec=spec, **options).to_json()  # type: ignore[arg-type]


async def test_a_job_from_arq_to_the_result_hash(served: tuple[GpuWorker, ArqRedis, Keys]) -> None:
    worker, pool, keys = served
    await pool.enqueue_job(JOB_FUNCTION, _message(1), _job_id="a1", _queue_name=keys.queue())
    events = await _events(pool, keys, "1", until="result")
    assert [e.type for e in events if e.type not in ("llm", "render")] == [
        "started", "stage", "chat", "stage", "result"]
    stored = await pool.hgetall(keys.result("a1"))
    meta = loads(stored[b"meta"])
    assert meta["worker"] == "local" and meta["attempt"] == 1 and len(meta["layout"]) == 3
    assert stored[b"image"].startswith(b"\x89PNG") and stored[b"masks"].startswith(b"\x89PNG")
    assert not await pool.exists(keys.running("a1"))  # cleared when the job ended
    await wait_until(lambda: worker.done == 1, what="the done counter")


async def test_odd_jobs_get_a_clear_failure(served: tuple[GpuWorker, ArqRedis, Keys]) -> None:
    _, pool, keys = served
    await pool.enqueue_job(JOB_FUNCTION, {"v": 99, "job_id": 2}, _job_id="a2", _queue_name=keys.queue())
    (failed,) = [e for e in await _events(pool, keys, "2", until="failed") if e.type == "failed"]
    assert "not valid" in failed.data["message"] and "version 99" in failed.data["message"]

    # Its third run, with two allowed: the workers before it died; the user is told, nothing runs.
    await pool.enqueue_job(JOB_FUNCTION, _message(3, max_attempts=2), _job_id="a3", _queue_name=keys.queue(),
                           _job_try=3)
    events = await _events(pool, keys, "3", until="failed")
    assert [e.type for e in events] == ["failed"]
    assert "stopped 2 times" in events[0].data["message"]

    # Cancelled before any worker took it: it ends at once.
    await pool.set(keys.cancelled("a4"), b"1")
    await pool.enqueue_job(JOB_FUNCTION, _message(4), _job_id="a4", _queue_name=keys.queue())
    assert [e.type for e in await _events(pool, keys, "4", until="cancelled")] == ["started", "cancelled"]


async def test_health_lists_live_and_gone_workers(redis_url: str, served: tuple[GpuWorker, ArqRedis, Keys],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, pool, keys = served
    await pool.zadd(keys.workers, {"old-box": time.time() - 3600, "ancient": 1.0e9})  # no live records

    health = await read_health(pool, keys)
    (live,) = health.alive
    assert (live.worker_id, live.queue, live.models, live.concurrency) == (
        "local", "default", {"llm": "tiny", "sdxl": "tiny-xl"}, 1)
    assert health.capacity("default") == 1 and health.capacity("other") == 0
    lines = health.lines()
    assert lines[0].startswith("workers: 1 online, 1 gone")
    assert any(line.startswith("- local on ") and "llm tiny" in line for line in lines)
    assert any(line.startswith("- old-box: gone, last seen 36") for line in lines)
    assert not any("ancient" in line for line in lines)  # not heard from for over a week: dropped

    assert await asyncio.to_thread(main, ["workers", "--redis-url", redis_url, "--prefix", keys.prefix]) == 0
    out = capsys.readouterr().out
    assert "1 online" in out and "- local on " in out


async def _no_sleep(seconds: float) -> None:
    return None


def test_worker_command_needs_a_redis_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("OMOST_REDIS_URL", raising=False)
    assert main(["worker", "--engine", "scripted"]) == 2
    assert "a Redis URL is needed" in capsys.readouterr().err
    assert main(["worker", "--engine", "scripted", "--redis-url", "redis://x", "--lease", "0.1"]) == 2
    assert "lease_s" in capsys.readouterr().err
    # Unreachable Redis: one line, no traceback (arq tries a few times first).
    monkeypatch.setattr("arq.connections.asyncio.sleep", _no_sleep)
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


async def test_status_text_for_both_backends(redis_url: str, served: tuple[GpuWorker, ArqRedis, Keys]) -> None:
    _, _, keys = served
    local = InProcessJobBackend(ScriptedEngine())
    assert await status_lines(local) == ["queue: 0 running, 0 waiting in the bot",
                                         "workers: this process (in-process queue)"]
    remote = RedisJobBackend(RedisConfig(url=redis_url, prefix=keys.prefix))
    lines = await status_lines(remote)
    await remote.close()
    assert lines[0] == "queue: 0 running, 0 waiting in the bot"
    assert lines[1].startswith("workers: 1 online") and lines[2].startswith("- local on ")
    down = RedisJobBackend(RedisConfig(url="redis://127.0.0.1:1/0"))
    (_, failure) = await status_lines(down)
    assert failure.startswith("workers: Redis cannot be read: cannot reach Redis at redis://127.0.0.1:1/0")


async def test_watchdog_requeues_a_vanished_job_then_gives_up(redis_url: str) -> None:
    client = RedisJobClient(RedisConfig(url=redis_url, prefix=f"unit-{uuid.uuid4().hex[:8]}", queue="nobody"))
    await client.connect()
    try:
        spec = JobSpec(job_id=9, prompt="x", history=(), llm=None, llm_params=LLMParams(), render_params=RenderParams())
        await client.submit(JobMessage(spec=spec, max_attempts=2))
        queue = client.keys.queue("nobody")
        first = client.run_id("9")
        assert first is not None
        score = await client.redis.zscore(queue, first)

        async def lose_it() -> None:  # as if Redis lost the job while its worker died
            run = client.run_id("9")
            assert run is not None
            await client.redis.zrem(queue, run)
            await client.watch()  # first look: missing; the bot reads events before the second look
            assert await client.read_events(block_s=0.01) == []
            await client.watch()

        await lose_it()
        second = client.run_id("9")
        assert second is not None and second != first
        assert await client.redis.zscore(queue, second) <= score  # back at the front of the queue

        # Its second run starts on a worker, then vanishes too: two runs were allowed, the user is told.
        started = WireEvent(type="started", job_id="9", attempt=2, worker="w")
        await client.redis.xadd(client.keys.events, started.encode())  # type: ignore[arg-type]
        (event,) = await client.read_events(block_s=0.01)
        await client.ack(event)
        await lose_it()
        events = await client.read_events(block_s=0.01)
        assert [e.type for e in events] == ["failed"] and "stopped 2 times" in events[0].data["message"]
        assert client.run_id("9") == second  # not queued a third time
    finally:
        await client.close()


async def test_a_worker_that_lost_its_lease_stops_and_stays_silent(served: tuple[GpuWorker, ArqRedis, Keys]) -> None:
    worker, pool, keys = served
    message = _message(5)
    message["prompt"] = "a long night {{delay=20}}"
    await pool.enqueue_job(JOB_FUNCTION, message, _job_id="a5", _queue_name=keys.queue())
    await _events(pool, keys, "5", until="stage")
    # As if this process had stalled past its lease and another worker had taken the job meanwhile.
    await pool.delete("arq:in-progress:a5")
    await pool.set(keys.running("a5"), b"another worker")
    await wait_until(lambda: not worker.running, timeout=5, what="the worker to stop the job")
    await asyncio.sleep(0.3)  # a few heartbeats: nothing more may be said about the job
    types = [e.type for e in await _events(pool, keys, "5", until="stage")]
    assert not {"result", "failed", "cancelled", "requeued"} & set(types)
    assert await pool.get(keys.running("a5")) == b"another worker"  # the new owner's key is left alone


def test_real_engine_comes_from_the_workers_own_configuration(tmp_path: Path) -> None:
    config = tmp_path / "worker.toml"
    config.write_text('[bot]\nllm_endpoint = "http://10.0.0.7:8000/v1"\nsdxl = "SG161222/RealVisXL_V4.0"\n'
                      'device = "cpu"\n')
    engine, models = build_engine(argparse.Namespace(engine="real", config=str(config), scripted_seconds=0.2))
    assert models == {"llm": "http://10.0.0.7:8000/v1", "sdxl": "SG161222/RealVisXL_V4.0"}
    assert callable(engine.chat) and callable(engine.render)  # built lazily: no model is loaded yet
    scripted, names = build_engine(argparse.Namespace(engine="scripted", config=None, scripted_seconds=0.4))
    assert isinstance(scripted, ScriptedEngine) and scripted.chat_seconds == scripted.render_seconds == 0.2
    assert names == {"llm": "scripted-llm", "sdxl": "scripted-sdxl"}
