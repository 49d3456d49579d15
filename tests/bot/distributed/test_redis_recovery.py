"""Workers that die or stop mid-job: the job runs again on another worker, or its user is told."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis_harness import RecordingHandler, WorkerProcess, bot_on_redis, wait_for_workers, wait_until

from bot.distributed.backend import RedisJobBackend
from bot.distributed.client import RedisConfig
from bot.jobs import Failed, Finished, Requeued, Started, Ticket


@pytest.fixture(scope="module")
def pool(start_worker: Callable[..., WorkerProcess]) -> dict[str, WorkerProcess]:
    """Worker processes by name; the tests below kill and add some, in order."""
    return {name: start_worker(name) for name in ("w1", "w2")}


@pytest.fixture
async def backend(
    redis_url: str, prefix: str, pool: dict[str, WorkerProcess]
) -> AsyncIterator[RedisJobBackend]:
    backend = RedisJobBackend(
        RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2, no_worker_timeout_s=1.0)
    )
    await wait_for_workers(backend, {name for name, w in pool.items() if w.process.poll() is None})
    yield backend
    await backend.close()


async def test_killed_worker_job_runs_again_on_the_other(
    backend: RedisJobBackend, pool: dict[str, WorkerProcess]
) -> None:
    handler = RecordingHandler(prompts={1: "a long voyage {{delay=1.5}}"})
    backend.bind(handler)
    await backend.submit(Ticket(job_id=1, user_id=1))
    await wait_until(lambda: handler.of(1, Started), what="the job started")
    victim, attempt = backend.ran_on[1]
    assert attempt == 1
    pool[victim].kill()  # SIGKILL: no goodbye, its lease simply runs out
    await backend.join(timeout=30)

    assert isinstance(handler.ended(1), Finished)
    survivor = ({"w1", "w2"} - {victim}).pop()
    assert backend.ran_on[1] == (survivor, 2)
    assert [e.attempt for e in handler.of(1, Requeued)] == [2]  # type: ignore[attr-defined]
    health = await backend.health()
    assert victim in {w.worker_id for w in health.workers if not w.alive}
    del pool[victim]


async def test_stopping_worker_gives_its_job_back(
    backend: RedisJobBackend, pool: dict[str, WorkerProcess], start_worker: Callable[..., WorkerProcess]
) -> None:
    pool["w3"] = start_worker("w3")
    await wait_for_workers(backend, set(pool))
    handler = RecordingHandler(prompts={2: "a long walk {{delay=1.5}}"})
    backend.bind(handler)
    await backend.submit(Ticket(job_id=2, user_id=1))
    await wait_until(lambda: handler.of(2, Started), what="the job started")
    runner, _ = backend.ran_on[2]
    pool[runner].stop()  # SIGTERM: the worker hands the job back at once
    assert pool[runner].process.returncode == 0
    await backend.join(timeout=30)

    assert isinstance(handler.ended(2), Finished)
    other = (set(pool) - {runner}).pop()
    assert backend.ran_on[2] == (other, 2)
    # The user saw the job waiting again, once, with the run that comes next.
    assert [(e.attempt, e.reason) for e in handler.of(2, Requeued)] == [(2, "the GPU worker stopped")]  # type: ignore[attr-defined]
    assert [e.stage for e in handler.of(2, Started)] == ["llm", "llm", "render"]  # type: ignore[attr-defined]
    del pool[runner]


async def test_the_status_message_says_when_a_lost_worker_sent_the_job_back(
    tmp_path: Path,
    redis_url: str,
    prefix: str,
    pool: dict[str, WorkerProcess],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    pool["w4"] = start_worker("w4")
    async with bot_on_redis(tmp_path, redis_url, prefix, set(pool)) as world:
        await world.owner.slash(world.channel, "omost pause")  # the slash returns before the job runs
        result = await world.alice.slash(
            world.channel, "omost compose", prompt="a long road {{delay=1.5}}", steps=4, size="256x256"
        )
        backend = world.bot.backend
        assert isinstance(backend, RedisJobBackend)
        edits: list[str] = []
        service_event = world.bot.jobs.on_event
        world.bot.jobs.on_event = lambda event: (edits.append(type(event).__name__), service_event(event))[1]
        backend.resume()
        await wait_until(lambda: "Started" in edits, what="the job started")
        victim, _ = backend.ran_on[1]
        pool[victim].kill()
        await wait_until(lambda: "Requeued" in edits, timeout=30, what="the job sent back to the queue")
        await world.bot.jobs.drain()
        retry_text = result.response.content
        await backend.join(timeout=30)
        await world.bot.jobs.drain()
        await world.env.settle()
        del pool[victim]

        assert "attempt 2" in retry_text and "worker lost" in retry_text, retry_text
        message = result.response
        assert "Done" in message.content and len(message.attachments) == 2
        job = await world.bot.storage.job_by_message(message.id)
        assert job is not None and job.state == "done" and backend.ran_on[1][1] == 2


async def test_user_is_told_when_no_worker_is_left(
    backend: RedisJobBackend, pool: dict[str, WorkerProcess]
) -> None:
    (last,) = pool.values()
    handler = RecordingHandler(prompts={3: "the last light {{delay=5}}"})
    backend.bind(handler)
    await backend.submit(Ticket(job_id=3, user_id=1))
    await wait_until(lambda: handler.of(3, Started), what="the job started")
    await backend.submit(Ticket(job_id=4, user_id=1))  # waits in the bot for a free slot
    last.kill()
    await backend.join(timeout=30)

    for job_id in (3, 4):
        ended = handler.ended(job_id)
        assert isinstance(ended, Failed) and "no GPU worker is online" in ended.message
    assert 4 not in handler.prepared  # it never reached a worker
