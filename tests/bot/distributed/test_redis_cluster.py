"""The Redis backend with two real worker processes (scripted engine): spread, order, caps, cancel,
stage limits, failures, and a bot restart while a job runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from PIL import Image
from redis.asyncio import Redis
from redis_harness import RecordingHandler, WorkerProcess, wait_for_workers, wait_until, wait_until_async

from bot.distributed.backend import RedisJobBackend
from bot.distributed.client import RedisConfig
from bot.distributed.protocol import Keys
from bot.jobs import (
    Cancelled,
    ChatDone,
    Failed,
    Finished,
    Progress,
    QueueFullError,
    StageTimeouts,
    Started,
    Ticket,
)
from omost_engine.params import LLMParams
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.testing.scripted_engine import ScriptedEngine

WORKERS = {"gpu-a", "gpu-b"}


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., WorkerProcess]) -> dict[str, WorkerProcess]:
    return {name: start_worker(name, seconds=0.3) for name in sorted(WORKERS)}


@pytest.fixture
async def backend(redis_url: str, prefix: str, workers: dict[str, WorkerProcess]) -> AsyncIterator[RedisJobBackend]:
    backend = RedisJobBackend(RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2))
    await wait_for_workers(backend, WORKERS)
    yield backend
    await backend.close()


async def test_jobs_spread_over_two_worker_processes(backend: RedisJobBackend) -> None:
    handler = RecordingHandler()
    backend.bind(handler)
    for job_id in range(1, 7):
        await backend.submit(Ticket(job_id=job_id, user_id=100 + job_id))
    await backend.join(timeout=30)

    for job_id in range(1, 7):
        finished = handler.ended(job_id)
        assert isinstance(finished, Finished), handler.of(job_id)
        output = finished.output
        assert output.chat is not None and f"job {job_id}" in output.chat.reply
        assert len(output.layout.conditions) == 3  # global + the two scripted regions
        assert isinstance(output.render.image, Image.Image) and output.render.image.size == (32, 32)
        assert output.render.masks.size == (360, 360)
        assert [e.stage for e in handler.of(job_id, Started)] == ["llm", "render"]  # type: ignore[attr-defined]
        assert handler.of(job_id, ChatDone)
        kinds = {type(e.progress) for e in handler.of(job_id, Progress)}  # type: ignore[attr-defined]
        assert kinds == {LLMProgress, RenderProgress}
    assert {worker for worker, _ in backend.ran_on.values()} == WORKERS
    assert all(attempt == 1 for _, attempt in backend.ran_on.values())
    health = await backend.health()
    assert {w.worker_id for w in health.alive} == WORKERS
    assert all(w.models == {"llm": "scripted-llm", "sdxl": "scripted-sdxl"} for w in health.alive)


async def test_fair_order_and_user_caps_across_workers(backend: RedisJobBackend) -> None:
    handler = RecordingHandler()
    backend.bind(handler)
    backend.pause()
    alice, bob = 1, 2
    positions = [await backend.submit(Ticket(job_id=job_id, user_id=alice), user_cap=4) for job_id in (11, 12, 13, 14)]
    positions += [await backend.submit(Ticket(job_id=job_id, user_id=bob), user_cap=4) for job_id in (21, 22)]
    assert positions == [1, 2, 3, 4, 2, 4]  # bob's jobs take turns with alice's
    with pytest.raises(QueueFullError, match="limit is 4"):
        await backend.submit(Ticket(job_id=15, user_id=alice), user_cap=4)
    assert [t.job_id for t, _ in backend.snapshot()] == [11, 21, 12, 22, 13, 14]

    backend.resume()
    await wait_until(lambda: len(handler.prepared) >= 2, what="two jobs handed to the workers")
    # Running jobs on the workers still count towards the cap.
    with pytest.raises(QueueFullError):
        await backend.submit(Ticket(job_id=16, user_id=alice), user_cap=4)
    await backend.join(timeout=30)

    assert handler.prepared == [11, 21, 12, 22, 13, 14]
    assert all(isinstance(handler.ended(j), Finished) for j in handler.prepared)
    # Never more jobs on the workers than they have slots.
    running, most = 0, 0
    for event in handler.events:
        if isinstance(event, Started) and event.stage == "llm":
            running += 1
            most = max(most, running)
        elif isinstance(event, Finished | Failed | Cancelled):
            running -= 1
    assert most == 2


async def test_cancel_reaches_the_worker_process(backend: RedisJobBackend) -> None:
    handler = RecordingHandler(prompts={31: "a slow storm {{delay=30}}"})
    backend.bind(handler)
    await backend.submit(Ticket(job_id=31, user_id=5))
    await wait_until(lambda: handler.of(31, Started), what="the job running on a worker")
    worker, _ = backend.ran_on[31]
    assert await backend.cancel(31)
    await wait_until(lambda: handler.ended(31) is not None, timeout=10, what="the cancel")
    assert isinstance(handler.ended(31), Cancelled)
    # The worker that ran it is free again: its next job finishes.
    await backend.submit(Ticket(job_id=32, user_id=5))
    await backend.submit(Ticket(job_id=33, user_id=6))
    await backend.join(timeout=30)
    assert isinstance(handler.ended(32), Finished) and isinstance(handler.ended(33), Finished)
    assert worker in {backend.ran_on[32][0], backend.ran_on[33][0]}

    # A job still waiting in the bot never reaches a worker.
    backend.pause()
    await backend.submit(Ticket(job_id=34, user_id=5))
    assert await backend.cancel(34)
    assert isinstance(handler.ended(34), Cancelled) and 34 not in handler.prepared
    backend.resume()
    assert not await backend.cancel(999)


async def test_stage_time_limit_engine_failure_and_layout_render(redis_url: str, prefix: str,
                                                                 workers: dict[str, WorkerProcess]) -> None:
    layout = ScriptedEngine().chat([], "a red barn", LLMParams()).layout
    handler = RecordingHandler(prompts={41: "a slow river {{delay=20}}", 42: "a crash {{fail=internal}}"},
                               layouts={43: layout})
    backend = RedisJobBackend(RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2),
                              timeouts=StageTimeouts(llm=0.5, render=30))
    backend.bind(handler)
    try:
        for job_id in (41, 42, 43):
            await backend.submit(Ticket(job_id=job_id, user_id=job_id))
        await backend.join(timeout=30)
    finally:
        await backend.close()
    slow, crash, render = handler.ended(41), handler.ended(42), handler.ended(43)
    assert isinstance(slow, Failed) and slow.stage == "llm" and "longer than 0.5 s" in slow.message
    assert isinstance(crash, Failed) and crash.stage == "llm" and "RuntimeError" in crash.message
    assert isinstance(render, Finished) and render.output.chat is None
    assert render.output.layout.conditions == layout.conditions
    assert [e.stage for e in handler.of(43, Started)] == ["render"]  # type: ignore[attr-defined]


async def test_results_reach_a_restarted_bot(redis_url: str, prefix: str, workers: dict[str, WorkerProcess]) -> None:
    config = RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2)
    first, before = RedisJobBackend(config), RecordingHandler(prompts={51: "a slow harbour {{delay=1.5}}",
                                                                      52: "a quick one {{delay=0.2}}"})
    first.bind(before)
    await first.submit(Ticket(job_id=51, user_id=7))
    await first.submit(Ticket(job_id=52, user_id=8))
    await wait_until(lambda: before.of(51, Started) and before.of(52, Started), what="both jobs started")
    await first.close()  # the bot stops; both jobs go on on the workers, 52 finishes while it is down
    redis = Redis.from_url(redis_url)
    try:
        await wait_until_async(lambda: redis.exists(Keys(prefix).result("52")), what="job 52's result in Redis")
    finally:
        await redis.aclose()

    second, after = RedisJobBackend(config), RecordingHandler()
    held = await second.held_jobs()
    assert sorted(t.job_id for t in held) == [51, 52]
    assert second.position(51) == 0 and second.held_by(7) == 1
    second.bind(after)
    second.deliver_held()
    try:
        await second.join(timeout=30)
    finally:
        await second.close()
    assert isinstance(after.ended(51), Finished) and isinstance(after.ended(52), Finished)
    assert before.ended(51) is None and before.ended(52) is None
    assert not after.prepared  # nothing was run twice
