"""The Redis backend with two real worker processes (scripted engine): spread, order, caps, cancel,
stage limits, failures, a bot restart while a job runs, and the real bot (simcord) on top."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import discord
import pytest
from PIL import Image
from redis.asyncio import Redis
from redis_harness import (
    SMALL_RENDER,
    RecordingHandler,
    WorkerProcess,
    bot_on_redis,
    restart_on_redis,
    wait_for_workers,
    wait_until,
    wait_until_async,
)
from simenv import World

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
from bot.storage import JobRecord, Storage
from omost_engine.params import LLMParams
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.testing.scripted_engine import ScriptedEngine
from omost_engine.variations import variation_seeds

WORKERS = {"gpu-a", "gpu-b"}


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., WorkerProcess]) -> dict[str, WorkerProcess]:
    return {name: start_worker(name, seconds=0.3) for name in sorted(WORKERS)}


@pytest.fixture
async def backend(
    redis_url: str, prefix: str, workers: dict[str, WorkerProcess]
) -> AsyncIterator[RedisJobBackend]:
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
    positions = [
        await backend.submit(Ticket(job_id=job_id, user_id=alice), user_cap=4) for job_id in (11, 12, 13, 14)
    ]
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
    assert 1 <= most <= 2


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


async def test_stage_time_limit_engine_failure_and_layout_render(
    redis_url: str, prefix: str, workers: dict[str, WorkerProcess]
) -> None:
    layout = ScriptedEngine().chat([], "a red barn", LLMParams()).layout
    handler = RecordingHandler(
        prompts={41: "a slow river {{delay=20}}", 42: "a crash {{fail=internal}}"}, layouts={43: layout}
    )
    backend = RedisJobBackend(
        RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2), timeouts=StageTimeouts(llm=0.5, render=30)
    )
    backend.bind(handler)
    try:
        for job_id in (41, 42, 43):
            await backend.submit(Ticket(job_id=job_id, user_id=job_id))
        await backend.join(timeout=30)
    finally:
        await backend.close()
    slow, crash, render = handler.ended(41), handler.ended(42), handler.ended(43)
    assert isinstance(slow, Failed) and slow.stage == "llm" and "longer than 0.5 s" in slow.message
    assert isinstance(crash, Failed) and crash.stage == "llm" and "LLM step failed" in crash.message
    assert "job #42" in crash.message and "RuntimeError" not in crash.message  # the traceback is in the log:
    logs = "".join(worker.output() for worker in workers.values())
    assert "job 42: the llm step failed" in logs and "Traceback" in logs and "RuntimeError" in logs
    assert isinstance(render, Finished) and render.output.chat is None
    assert render.output.layout.conditions == layout.conditions
    assert [e.stage for e in handler.of(43, Started)] == ["render"]  # type: ignore[attr-defined]


async def test_results_reach_a_restarted_bot(
    redis_url: str, prefix: str, workers: dict[str, WorkerProcess]
) -> None:
    config = RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2)
    first, before = (
        RedisJobBackend(config),
        RecordingHandler(prompts={51: "a slow harbour {{delay=1.5}}", 52: "a quick one {{delay=0.2}}"}),
    )
    first.bind(before)
    await first.submit(Ticket(job_id=51, user_id=7))
    await first.submit(Ticket(job_id=52, user_id=8))
    await wait_until(lambda: before.of(51, Started) and before.of(52, Started), what="both jobs started")
    run_52 = first.client.run_id("52")
    assert run_52 is not None
    await first.close()  # the bot stops; both jobs go on on the workers, 52 finishes while it is down
    redis = Redis.from_url(redis_url)
    try:
        await wait_until_async(
            lambda: redis.exists(Keys(prefix).result(run_52)), what="job 52's result in Redis"
        )
    finally:
        await redis.aclose()

    second, after = RedisJobBackend(config), RecordingHandler()
    held = await second.held_jobs()
    assert sorted(t.job_id for t in held) == [51, 52]
    assert second.position(51) == 0 and second.held_by(7) == 1
    second.bind(after)
    try:
        # A new job runs while the restarted bot is not yet tracking the held ones: their events wait.
        await second.submit(Ticket(job_id=53, user_id=9))
        await wait_until(lambda: after.ended(53) is not None, what="the new job")
        assert after.ended(52) is None
        second.deliver_held()
        await second.join(timeout=30)
    finally:
        await second.close()
    assert all(isinstance(after.ended(j), Finished) for j in (51, 52, 53))
    assert before.ended(51) is None and before.ended(52) is None
    assert after.prepared == [53]  # nothing was run twice


async def delivered_result(storage: Storage, message: discord.Message, prompt: str) -> JobRecord:
    """The stored job of a result message that carries the image and the layout of ``prompt``'s turn."""
    assert "Done" in message.content, message.content
    files = {a.filename: a for a in message.attachments}
    assert set(files) == {"image.png", "layout.json"}
    layout = json.loads(await files["layout.json"].read())
    assert layout[0]["prefixes"][0].startswith(prompt) and layout[0]["omost_bot"]["version"] == 2
    job = await storage.job_by_message(message.id)
    assert job is not None and job.state == "done"
    return job


@pytest.fixture
async def redis_world(
    tmp_path: Path, redis_url: str, prefix: str, workers: dict[str, WorkerProcess]
) -> AsyncIterator[World]:
    """The real bot (simcord) with the Redis backend in place of the in-process queue."""
    async with bot_on_redis(tmp_path, redis_url, prefix, WORKERS) as world:
        yield world


async def test_compose_through_the_bot_with_remote_workers(redis_world: World) -> None:
    world = redis_world
    await world.owner.slash(world.channel, "omost pause")
    a1 = await world.alice.slash(world.channel, "omost compose", prompt="alice one", steps=4, size="256x256")
    a2 = await world.alice.slash(world.channel, "omost compose", prompt="alice two", steps=4, size="256x256")
    b1 = await world.bob.slash(world.channel, "omost compose", prompt="bob one", steps=4, size="256x256")
    assert "next in the queue" in a1.response.content and "position 2" in b1.response.content
    listing = await world.bob.slash(world.channel, "omost queue")
    assert [line.split(" · ")[1] for line in listing.response.content.splitlines()[:3]] == [
        "job #1",
        "job #3",
        "job #2",
    ]
    await world.owner.slash(world.channel, "omost resume")
    await world.bot.backend.join(timeout=30)  # type: ignore[attr-defined]
    await world.env.settle()
    for result, prompt in ((a1, "alice one"), (a2, "alice two"), (b1, "bob one")):
        job = await delivered_result(world.bot.storage, result.response, prompt)
        assert job.render_model == "scripted-sdxl"


async def test_status_shows_the_workers_to_admins_only(redis_world: World) -> None:
    world = redis_world
    admins = world.guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    admin = world.guild.add_member(world.env.create_user("boss"), roles=[admins])
    refused = await world.alice.slash(world.channel, "omost status")
    assert refused.ephemeral and "only admins" in refused.response.content
    shown = await admin.slash(world.channel, "omost status")
    lines = shown.response.content.splitlines()
    assert lines[0] == "queue: 0 running, 0 waiting in the bot"
    assert lines[1].startswith("workers: 2 online")
    for name in sorted(WORKERS):
        (line,) = [line for line in lines if line.startswith(f"- {name} on ")]
        assert "llm scripted-llm, sdxl scripted-sdxl" in line and "queue default" in line


async def test_the_bot_restarted_while_a_job_runs(redis_world: World, redis_url: str, prefix: str) -> None:
    """Issue 7: a bot restart while workers are busy; results that arrive are still delivered, to the same
    status messages, and nothing is reported as interrupted."""
    world = redis_world
    await world.owner.slash(world.channel, "omost pause")  # so that the slashes return before the jobs run
    slow = await world.alice.slash(
        world.channel, "omost compose", prompt="a slow harbour {{delay=2}}", steps=4, size="256x256"
    )
    quick = await world.bob.slash(
        world.channel, "omost compose", prompt="a quick lane {{delay=0.3}}", steps=4, size="256x256"
    )
    backend = world.bot.backend
    assert isinstance(backend, RedisJobBackend)
    backend.resume()
    await wait_until(lambda: 1 in backend.ran_on and 2 in backend.ran_on, what="both jobs on the workers")
    await backend.close()  # the bot process dies here: its pump stops, no event is acknowledged
    run_quick = backend.client.run_id("2")
    assert run_quick is not None
    redis = Redis.from_url(redis_url)
    try:  # the quick job finishes while no bot is running
        await wait_until_async(lambda: redis.exists(Keys(prefix).result(run_quick)), what="job 2's result")
    finally:
        await redis.aclose()
    restarted = await restart_on_redis(world)
    await restarted.backend.join(timeout=30)  # type: ignore[attr-defined]
    await restarted.jobs.drain()
    await world.env.settle()

    assert restarted.jobs.delivered == 2  # both results came through the new bot
    for result, prompt in ((slow, "a slow harbour"), (quick, "a quick lane")):
        await delivered_result(restarted.storage, result.response, prompt)
    assert not [m for m in world.channel.history() if "interrupted" in m.content]
    assert restarted.jobs.trackers == {}


async def test_a_grid_and_an_upscale_base_cross_redis(
    redis_url: str, prefix: str, workers: dict[str, WorkerProcess]
) -> None:
    """Issue 12: the job message carries the count and (beside it, in its own key) an upscale's base image;
    the result hash carries every image of a grid with the seeds."""
    layout = ScriptedEngine().chat([], "a red barn", LLMParams()).layout
    base = Image.new("RGB", (32, 32), (200, 10, 10))
    handler = RecordingHandler(
        layouts={61: layout, 62: layout},
        changes={
            61: {"count": 4},
            62: {"base": base, "render_params": SMALL_RENDER.replace(hr_scale=1.5, hr_steps=3)},
        },
    )
    backend = RedisJobBackend(RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2))
    backend.bind(handler)
    try:
        for job_id in (61, 62):
            await backend.submit(Ticket(job_id=job_id, user_id=job_id))
        await backend.join(timeout=30)
        leftover = await backend.client.redis.keys(f"{prefix}:base:*")
    finally:
        await backend.close()
    grid = handler.ended(61)
    assert isinstance(grid, Finished)
    render = grid.output.render
    assert render.count == 4 and render.batched
    assert render.seeds == variation_seeds(SMALL_RENDER.seed, 4)
    assert [image.size for image in render.images] == [(32, 32)] * 4 and render.image.size == (64, 64)
    assert len({image.tobytes() for image in render.images}) == 4  # four seeds, four pictures
    assert render.image.crop((32, 32, 64, 64)).tobytes() == render.images[3].convert("RGB").tobytes()
    grid_steps = [e.progress for e in handler.of(61, Progress) if isinstance(e.progress, RenderProgress)]
    assert grid_steps and all(p.images == 4 for p in grid_steps)  # progress covers the whole grid
    upscale = handler.ended(62)
    assert isinstance(upscale, Finished) and upscale.output.render.image.size == (48, 48)
    stages = {e.progress.stage for e in handler.of(62, Progress) if isinstance(e.progress, RenderProgress)}
    assert stages == {"hires"}  # the worker had the base: only the high-res pass ran
    assert leftover == []  # the base key went with the delivered job


async def test_a_grid_a_pick_and_an_upscale_through_the_bot_with_remote_workers(redis_world: World) -> None:
    world = redis_world
    backend = world.bot.backend
    assert isinstance(backend, RedisJobBackend)

    async def finished() -> None:
        await backend.join(timeout=30)
        await world.bot.jobs.drain()
        await world.env.settle()

    grid = await world.alice.slash(
        world.channel, "omost compose", prompt="a grid", count=4, seed=20, steps=2, size="256x256"
    )
    await finished()
    message = grid.response
    assert message is not None and "Pick an image" in message.content
    assert {f.name: f.value for f in message.embeds[0].fields}["Seeds"] == "1: 20 · 2: 21 · 3: 22 · 4: 23"
    files = {a.filename: a for a in message.attachments}
    assert Image.open(io.BytesIO(await files["grid.png"].read())).size == (64, 64)
    kept = [await world.bot.storage.result_image(1, n) for n in range(4)]
    assert [k.seed for k in kept if k is not None] == [20, 21, 22, 23]

    picked = await world.bob.click(message, label="2")  # from the kept image: no job reaches Redis
    assert picked.response is not None and "Done" in picked.response.content
    assert {f.name: f.value for f in picked.response.embeds[0].fields}["Seed"] == "21"
    assert backend.ran_on.keys() == {1}

    upscaled = await world.bob.click(picked.response, label="Upscale")
    assert upscaled.response is not None
    await finished()
    result = upscaled.response
    assert "Done" in result.content and 3 in backend.ran_on
    image = {a.filename: a for a in result.attachments}["image.png"]
    assert Image.open(io.BytesIO(await image.read())).size == (48, 48)  # 384x384 / 8
    job = await world.bot.storage.job(3)
    assert job is not None and job.state == "done" and job.base_job_id == 2
