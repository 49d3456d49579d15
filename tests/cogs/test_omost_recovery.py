"""A restart of the bot: queued and running jobs resume, delivered results stay as they are, the requester
keeps their name (issue 10, items 4, 5 and 14)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from simenv import World, assert_no_mass_mentions, run_jobs_beside_the_simulator


async def pause(world: World) -> None:
    result = await world.owner.slash(world.channel, "omost pause")
    assert "paused" in result.response.content


async def test_a_result_delivered_after_a_restart_names_its_requester(world: World) -> None:
    await pause(world)
    queued = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    await world.restart()
    result = queued.response
    assert "Done" in result.content
    footer = result.embeds[0].footer.text
    assert footer.startswith("Job #1 by alice ·"), footer


def edits_of(world: World, message_id: int) -> list[str]:
    """The content of every edit the bot made to one message."""
    return [
        str((entry.json or {}).get("content"))
        for entry in world.env.http_requests
        if entry.method == "PATCH" and entry.path.endswith(f"/messages/{message_id}")
    ]


async def crash_while_running(world: World, job_id: int) -> None:
    """The process dies while the job is on the GPU: its row says running (what prepare() wrote)."""
    await world.bot.storage.update_job(job_id, state="running")


async def test_the_running_job_resumes_first_after_a_restart_and_the_waiting_one_follows(
    world: World,
) -> None:
    await pause(world)
    running = await world.alice.slash(world.channel, "omost compose", prompt="was running", seed=77)
    waiting = await world.bob.slash(world.channel, "omost compose", prompt="was waiting")
    await crash_while_running(world, 1)
    before = len(world.channel.history())
    await world.restart()
    job1, job2 = await world.bot.storage.job(1), await world.bot.storage.job(2)
    assert (job1.state, job1.attempt, job2.state, job2.attempt) == ("done", 2, "done", 1)
    # Its turn first, then the one that was waiting; the LLM saw the same prompt and seed again.
    assert [c[1:] for c in world.engine.calls if c[0] == "chat"] == [
        ("was running", 77),
        ("was waiting", job2.llm_params.seed),
    ]
    assert job1.render_params.seed == 77
    # The status message said it resumes, then became the result: one delivery, no new message.
    assert any(
        "resume" in text and "after a restart (attempt 2)" in text
        for text in edits_of(world, running.response.id)
    )
    assert "Done" in running.response.content and len(running.response.attachments) == 2
    assert job1.result_message_id == running.response.id
    assert "Done" in waiting.response.content
    assert len(world.channel.history()) == before
    assert not [m for m in world.channel.history() if "interrupted" in m.content]
    assert assert_no_mass_mentions(world, may_ping=set()) >= 6


async def test_a_resumed_layout_render_keeps_its_layout_and_seed(world: World) -> None:
    await pause(world)
    comfy = b'[{"rect": [0, 90, 0, 90], "prefixes": ["a calm sea"], "suffixes": [], "color": [0, 0, 200]}]'
    status = await world.alice.slash(world.channel, "omost render", layout=("sea.json", comfy), seed=5)
    await crash_while_running(world, 1)
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.attempt == 2
    assert world.engine.calls == [("render", "a calm sea", 5)]  # no LLM turn: the stored layout
    assert "Done" in status.followups[0].content


@pytest.mark.bot_config(max_attempts=2)
async def test_a_job_that_keeps_crashing_fails_with_its_id_after_max_attempts(world: World) -> None:
    await pause(world)
    running = await world.alice.slash(world.channel, "omost compose", prompt="crashes the bot")
    await world.bot.storage.update_job(1, state="running", attempt=2)  # its second run died too
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "failed" and "restarted while it ran, 2 times" in job.error
    assert world.engine.calls == []
    assert running.response.content.startswith("❌ Job #1 failed:") and running.response.components == []
    (notice,) = [m for m in world.channel.history() if "job #1 failed" in m.content]
    assert notice.reference is not None and notice.reference.message_id == running.response.id
    assert [u.id for u in notice.mentions] == [world.alice.id] and not notice.mention_everyone
    assert assert_no_mass_mentions(world, may_ping={world.alice.id}) >= 3  # the restart notice included


@pytest.mark.bot_config(max_attempts=1)
async def test_max_attempts_one_never_resumes(world: World) -> None:
    await pause(world)
    await world.alice.slash(world.channel, "omost compose", prompt="once only")
    await crash_while_running(world, 1)
    await world.restart()
    assert (await world.bot.storage.job(1)).state == "failed" and world.engine.calls == []


async def test_a_result_discord_accepted_just_before_the_crash_is_kept(world: World) -> None:
    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    result = first.response
    assert "Done" in result.content
    # The crash came after Discord accepted the result edit and before the database recorded "done":
    # the row is as _deliver left it then (running, delivery intent recorded, no result message).
    await world.bot.storage.db.execute(
        "UPDATE jobs SET state = 'running', result_message_id = NULL WHERE id = 1"
    )
    assert (await world.bot.storage.job(1)).delivery_started_at is not None
    edits, messages, calls = (
        len(edits_of(world, result.id)),
        len(world.channel.history()),
        len(world.engine.calls),
    )
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.result_message_id == result.id and job.attempt == 1
    assert len(edits_of(world, result.id)) == edits  # never touched
    assert "Done" in result.content and len(result.attachments) == 2 and result.components
    assert len(world.channel.history()) == messages and len(world.engine.calls) == calls
    # Replies and buttons on it work again: it is the job's result.
    await world.alice.send(world.channel, "make it night", reply_to=result)
    assert "Done" in world.channel.last_message.content


async def test_a_grid_discord_accepted_just_before_the_crash_is_kept(world: World) -> None:
    """A grid has no Reroll button: recovery knows a delivered result by its Layout & masks button."""
    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", count=4)
    result = first.response
    assert "Pick an image" in result.content
    await world.bot.storage.db.execute(
        "UPDATE jobs SET state = 'running', result_message_id = NULL WHERE id = 1"
    )
    renders = len(world.engine.renders)
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.result_message_id == result.id and job.attempt == 1
    assert len(world.engine.renders) == renders and "Pick an image" in result.content
    picked = await world.bob.click(result, label="1")
    assert picked.response is not None and "Done" in picked.response.content


async def test_a_result_sent_as_a_new_message_before_the_crash_is_found_and_kept(world: World) -> None:
    world.env.inject_error("PATCH", "/webhooks/*", status=500, times=None)
    world.env.inject_error("PATCH", "/channels/*/messages/*", status=500, times=None)
    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    delivered = world.channel.last_message
    assert delivered.id != first.response.id and "Done" in delivered.content
    world.env.errors  # acknowledge the injected failures  # noqa: B018
    await world.bot.storage.db.execute(
        "UPDATE jobs SET state = 'running', result_message_id = NULL WHERE id = 1"
    )
    calls = len(world.engine.calls)
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.result_message_id == delivered.id and len(world.engine.calls) == calls


async def test_a_job_whose_delivery_never_reached_discord_runs_again(world: World) -> None:
    await pause(world)
    status = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    # Delivery had started (intent recorded) but Discord never got the result: the status shows the queue.
    await world.bot.storage.update_job(1, state="running", delivery_started_at=1.0)
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.attempt == 2 and job.result_message_id == status.response.id
    assert "Done" in status.response.content


async def test_a_job_stopped_by_a_clean_shutdown_resumes_instead_of_being_cancelled(world: World) -> None:
    gate = threading.Event()
    world.engine.gate, world.engine.gate_stages, world.engine.gate_timeout = gate, {"render"}, 30.0
    await pause(world)
    status = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", seed=9)
    run_jobs_beside_the_simulator(world)
    assert await asyncio.to_thread(world.engine.at_gate.wait, 10), "the render never reached the gate"
    await world.env.settle()
    # A clean shutdown (SIGTERM, systemctl restart): the running job is stopped (its token set) ...
    await world.bot.close()
    assert world.engine.cancelled == ["render"]
    # ... and left running in the database, not reported cancelled.
    with sqlite3.connect(world.config.db) as db:
        assert db.execute("SELECT state FROM jobs WHERE id = 1").fetchone() == ("running",)
    assert "cancelled" not in status.response.content
    gate.set()
    await world.restart()
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.attempt == 2 and job.render_params.seed == 9
    assert "Done" in status.response.content and job.result_message_id == status.response.id
