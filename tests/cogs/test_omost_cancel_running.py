"""Cancelling a job while the engine is busy with it: the status message's Cancel button and
``/omost cancel``. The scripted engine holds the render at a gate until the job's CancelToken is set."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest_asyncio
from simcord import InteractionResult
from simenv import World, finish_jobs, run_jobs_beside_the_simulator


@pytest_asyncio.fixture
async def gate(world: World) -> AsyncIterator[threading.Event]:
    """Closed: a render waits there until its job is cancelled (or 30 s pass and the stage fails)."""
    gate = threading.Event()
    world.engine.gate, world.engine.gate_stages, world.engine.gate_timeout = gate, {"render"}, 30.0
    yield gate
    gate.set()  # a failed test must not leave the worker holding a job while the database closes
    await asyncio.wait_for(finish_jobs(world), 30)


async def start_two_jobs(world: World) -> tuple[InteractionResult, InteractionResult]:
    """Alice's job runs and is held inside its render; Bob's waits behind it."""
    paused = await world.owner.slash(world.channel, "omost pause")
    assert "paused" in paused.response.content
    alices = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    bobs = await world.bob.slash(world.channel, "omost compose", prompt="a quiet lake")
    assert "position 2" in bobs.response.content
    run_jobs_beside_the_simulator(world)
    assert await asyncio.to_thread(world.engine.at_gate.wait, 10), "the render never reached the gate"
    await world.env.settle()
    assert [c[0] for c in world.engine.calls] == ["chat", "render"]
    assert world.engine.calls[0][1] == "a dragon battle"
    assert "Job #1" in alices.response.content and "cancelled" not in alices.response.content
    assert (await world.bot.storage.job(1)).state == "running"
    return alices, bobs


async def assert_cancelled_and_next_delivered(
    world: World, gate: threading.Event, alices: InteractionResult, bobs: InteractionResult
) -> None:
    gate.set()  # Bob's render may pass; Alice's stopped already if the cancel reached the engine
    await finish_jobs(world)
    assert world.engine.cancelled == ["render"]  # the engine itself saw the cancel, inside the render stage
    job = await world.bot.storage.job(1)
    assert job is not None and job.state == "cancelled"
    status = alices.response
    assert (
        status.content == "✖️ Job #1 was cancelled." and status.components == [] and status.attachments == []
    )
    assert (await world.bot.storage.job(2)).state == "done"
    result = bobs.response
    assert "Done" in result.content and len(result.attachments) == 2
    assert [c[0] for c in world.engine.calls] == ["chat", "render", "chat", "render"]
    assert world.engine.calls[2][1] == "a quiet lake"


async def test_cancel_button_stops_the_running_job_and_the_next_one_runs(
    world: World, gate: threading.Event
) -> None:
    alices, bobs = await start_two_jobs(world)
    status = alices.response.message
    labels = [c["label"] for row in alices.response.components for c in row["components"]]
    assert labels == ["Cancel"]
    refused = await world.bob.click(status, label="Cancel")
    assert refused.ephemeral and "only your own jobs" in refused.response.content
    # Bob's click changed nothing: the job is still held in its render.
    assert world.engine.at_gate.is_set() and world.engine.cancelled == []
    assert (await world.bot.storage.job(1)).state == "running" and "cancelled" not in alices.response.content
    done = await world.alice.click(status, label="Cancel")
    assert done.ephemeral and "Cancelling job #1" in done.response.content
    await assert_cancelled_and_next_delivered(world, gate, alices, bobs)


async def test_cancel_command_stops_the_running_job_and_the_next_one_runs(
    world: World, gate: threading.Event
) -> None:
    alices, bobs = await start_two_jobs(world)
    refused = await world.bob.slash(world.channel, "omost cancel", job=1)
    assert refused.ephemeral and "only your own jobs" in refused.response.content
    assert world.engine.at_gate.is_set() and world.engine.cancelled == []
    assert (await world.bot.storage.job(1)).state == "running"
    done = await world.alice.slash(world.channel, "omost cancel")  # her newest: the running one
    assert done.ephemeral and "Cancelling job #1" in done.response.content
    await assert_cancelled_and_next_delivered(world, gate, alices, bobs)
