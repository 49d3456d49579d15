"""Queue position, fairness, caps, cancel, the 15-minute token limit and Discord errors (crash recovery:
test_omost_recovery.py)."""

from __future__ import annotations

import asyncio

import pytest
from simenv import World


async def pause(world: World) -> None:
    result = await world.owner.slash(world.channel, "omost pause")
    assert "paused" in result.response.content


async def resume(world: World) -> None:
    result = await world.owner.slash(world.channel, "omost resume")
    assert "runs again" in result.response.content


async def test_positions_fairness_and_the_queue_command(world: World) -> None:
    await pause(world)
    a1 = await world.alice.slash(world.channel, "omost compose", prompt="alice one")
    a2 = await world.alice.slash(world.channel, "omost compose", prompt="alice two")
    b1 = await world.bob.slash(world.channel, "omost compose", prompt="bob one")
    assert "next in the queue" in a1.response.content
    assert "position 2" in a2.response.content
    # Round-robin between users: bob's first job goes before alice's second.
    listing = await world.bob.slash(world.channel, "omost queue")
    assert listing.ephemeral
    lines = listing.response.content.splitlines()
    assert lines[0].startswith("#1 · job #1") and lines[1].startswith("#2 · job #3") and "(yours)" in lines[1]
    assert lines[2].startswith("#3 · job #2")
    await resume(world)
    prompts = [c[1] for c in world.engine.calls if c[0] == "chat"]
    assert prompts == ["alice one", "bob one", "alice two"]
    for result in (a1, a2, b1):
        assert "Done" in result.response.content
    empty = await world.alice.slash(world.channel, "omost queue")
    assert "empty" in empty.response.content


@pytest.mark.bot_config(max_queued_per_user=2)
async def test_per_user_cap_refuses_clearly_and_stores_nothing(world: World) -> None:
    await pause(world)
    await world.alice.slash(world.channel, "omost compose", prompt="one")
    await world.alice.slash(world.channel, "omost compose", prompt="two")
    third = await world.alice.slash(world.channel, "omost compose", prompt="three")
    assert (
        third.ephemeral
        and "limit is 2" in third.response.content
        and "/omost cancel" in third.response.content
    )
    other = await world.bob.slash(world.channel, "omost compose", prompt="bob")  # others are not affected
    assert not other.ephemeral
    rows = await world.bot.storage.db.fetchall("SELECT prompt FROM turns ORDER BY id")
    assert [r["prompt"] for r in rows] == ["one", "two", "bob"]
    conversations = await world.bot.storage.db.fetchone("SELECT COUNT(*) AS n FROM conversations")
    assert conversations["n"] == 2  # alice's and bob's
    await resume(world)


@pytest.mark.bot_config(max_queue=2)
async def test_full_queue_answers_clearly(world: World) -> None:
    await pause(world)
    await world.alice.slash(world.channel, "omost compose", prompt="one")
    await world.bob.slash(world.channel, "omost compose", prompt="two")
    full = await world.admin.slash(world.channel, "omost compose", prompt="three")
    assert full.ephemeral and "queue is full" in full.response.content
    comfy = b'[{"rect": [0, 90, 0, 90], "prefixes": ["sea"], "suffixes": [], "color": [0, 0, 200]}]'
    layout_refused = await world.admin.slash(world.channel, "omost render", layout=("sea.json", comfy))
    assert "queue is full" in layout_refused.response.content
    counts = {
        t: (await world.bot.storage.db.fetchone(f"SELECT COUNT(*) AS n FROM {t}"))["n"]
        for t in ("jobs", "turns", "layouts", "conversations", "current_conversations")
    }
    assert counts == {"jobs": 2, "turns": 2, "layouts": 0, "conversations": 2, "current_conversations": 2}
    await resume(world)


async def test_cancel_command_own_jobs_and_admins_any(world: World) -> None:
    await pause(world)
    first = await world.alice.slash(world.channel, "omost compose", prompt="one")
    await world.alice.slash(world.channel, "omost compose", prompt="two")
    own = await world.alice.slash(world.channel, "omost cancel")  # the newest of hers
    assert "Cancelling job #2" in own.response.content
    refused = await world.bob.slash(world.channel, "omost cancel", job=1)
    assert refused.ephemeral and "only your own jobs" in refused.response.content
    nothing = await world.bob.slash(world.channel, "omost cancel")
    assert "no queued or running job" in nothing.response.content
    by_admin = await world.admin.slash(world.channel, "omost cancel", job=1)
    assert "Cancelling job #1" in by_admin.response.content
    assert "cancelled" in first.response.content
    gone = await world.alice.slash(world.channel, "omost cancel", job=1)
    assert "not queued or running" in gone.response.content
    missing = await world.alice.slash(world.channel, "omost cancel", job=99)
    assert "does not exist" in missing.response.content
    await resume(world)
    assert world.engine.calls == []


async def test_owner_commands_are_refused_to_others(world: World) -> None:
    for command in ("omost pause", "omost resume", "omost sync"):
        result = await world.alice.slash(world.channel, command)
        assert result.ephemeral and "only the bot's owners" in result.response.content


async def test_sync_command_forces_a_sync(world: World) -> None:
    before = sum(1 for e in world.env.http_requests if e.method == "PUT" and e.path.endswith("/commands"))
    result = await world.owner.slash(world.channel, "omost sync")
    assert "synced" in result.response.content
    after = sum(1 for e in world.env.http_requests if e.method == "PUT" and e.path.endswith("/commands"))
    assert after == before + 1


async def test_result_after_the_interaction_token_expired_goes_through_the_channel(world: World) -> None:
    await pause(world)
    queued = await world.alice.slash(world.channel, "omost compose", prompt="a slow one")
    await world.env.advance_time(16 * 60)  # past Discord's 15-minute interaction token lifetime
    await resume(world)
    message = queued.response
    assert "Done" in message.content and len(message.attachments) == 2
    status_edits = [
        e for e in world.env.http_requests if e.method == "PATCH" and e.path.endswith(f"/{message.id}")
    ]
    assert status_edits and all(e.path.startswith("/channels/") for e in status_edits)


async def test_injected_discord_errors_fall_back_and_never_lose_the_result(world: World) -> None:
    # Every edit through the interaction fails: the status message is edited through the channel instead.
    world.env.inject_error("PATCH", "/webhooks/*", status=500, times=None)
    first = await world.alice.slash(world.channel, "omost compose", prompt="one")
    assert "Done" in first.response.content and len(first.response.attachments) == 2
    # Now channel edits fail too: the result arrives as a new message that mentions the requester.
    world.env.inject_error("PATCH", "/channels/*/messages/*", status=500, times=None)
    second = await world.alice.slash(world.channel, "omost compose", prompt="two")
    assert "Done" not in second.response.content
    delivered = world.channel.last_message
    assert (
        delivered.id != second.response.id and "Done" in delivered.content and len(delivered.attachments) == 2
    )
    job = await world.bot.storage.job(2)
    assert job.result_message_id == delivered.id
    world.env.errors  # acknowledge: nothing may have been raised into discord.py  # noqa: B018
    assert world.env.errors == []


async def test_status_message_that_cannot_be_sent_does_not_lose_the_job(world: World) -> None:
    world.env.inject_error("POST", "/interactions/*/callback", status=500, times=1)
    await world.alice.slash(world.channel, "omost compose", prompt="one")
    delivered = world.channel.last_message
    assert "Done" in delivered.content and len(delivered.attachments) == 2
    world.env.errors  # noqa: B018


async def test_queue_positions_held_back_by_the_throttle_are_sent_later(world: World) -> None:
    # The bot handles each progress event (and finishes its edits) before the engine goes on.
    world.engine.loop, world.engine.settled = asyncio.get_running_loop(), lambda: world.bot.jobs.idle
    await pause(world)
    first = await world.alice.slash(world.channel, "omost compose", prompt="one", steps=4)
    second = await world.bob.slash(world.channel, "omost compose", prompt="two", steps=4)
    third = await world.admin.slash(world.channel, "omost compose", prompt="three", steps=4)
    assert "position 3" in third.response.content
    await resume(world)
    # When job 1 started, job 3 moved to position 2 within the throttle interval of its last edit; the
    # update went out once job 1's progress had moved the clock on, before job 3's own turn.
    texts = [
        (e.json or {}).get("content") or ""
        for e in world.env.http_requests
        if e.method == "PATCH" and e.path.endswith(f"/messages/{third.response.id}")
    ]
    assert "⏳ Job #3 is queued: position 2." in texts
    assert texts.index("⏳ Job #3 is queued: position 2.") < next(
        i for i, t in enumerate(texts) if "LLM" in t
    )
    assert all("Done" in r.response.content for r in (first, second, third))


async def test_commands_are_synced_again_only_when_the_tree_changed(world: World) -> None:
    def puts() -> int:
        return sum(1 for e in world.env.http_requests if e.method == "PUT" and e.path.endswith("/commands"))

    first = puts()
    assert first == 1 and await world.bot.storage.meta("command_tree_hash") == world.bot.command_tree_hash()
    await world.restart()
    assert puts() == first and not world.bot.synced_commands
    await world.bot.storage.set_meta("command_tree_hash", "an older tree")  # as after an upgrade
    await world.restart()
    assert puts() == first + 1 and world.bot.synced_commands


async def test_status_is_for_admins_and_shows_the_queue_and_the_local_worker(world: World) -> None:
    refused = await world.alice.slash(world.channel, "omost status")
    assert refused.ephemeral and "only admins" in refused.response.content
    await pause(world)
    await world.alice.slash(world.channel, "omost compose", prompt="one")
    await world.bob.slash(world.channel, "omost compose", prompt="two")
    shown = await world.admin.slash(world.channel, "omost status")
    assert shown.ephemeral
    assert shown.response.content.splitlines() == [
        "queue: 0 running, 2 waiting in the bot",
        "workers: this process (in-process queue)",
    ]
    await resume(world)


@pytest.mark.parametrize(
    "per_second",
    [pytest.param(r, marks=pytest.mark.bot_config(max_queue=100, status_edits_per_s=r)) for r in (1.0, 0.25)],
)
async def test_status_edits_stay_within_one_bot_wide_budget_however_long_the_queue(
    world: World, per_second: float
) -> None:
    # 30 users wait; each started job moves everyone up. Status edits other than results (positions, stages,
    # progress) go out at most `per_second` a second on the bot's clock (the engine moves it 1 s per progress
    # event; 0.25 is less than the running jobs alone would use), and every result is delivered.
    world.engine.loop, world.engine.settled = asyncio.get_running_loop(), lambda: world.bot.jobs.idle
    members = [world.guild.add_member(world.env.create_user(f"user{i}")) for i in range(30)]
    await pause(world)
    results = [
        await m.slash(world.channel, "omost compose", prompt=f"job {i}", steps=8)
        for i, m in enumerate(members)
    ]
    assert "position 30" in results[-1].response.content
    before, start = len(world.env.http_requests), world.clock()
    await resume(world)
    elapsed = world.clock() - start
    edits = [e for e in world.env.http_requests[before:] if e.method == "PATCH"]
    progress = [e for e in edits if not ((e.json or {}).get("content") or "").startswith("✅")]
    assert len(edits) - len(progress) == 30 and all("Done" in r.response.content for r in results)
    assert elapsed >= 30 * 11 and len(progress) <= per_second * elapsed + 2 * per_second + 1
    # Positions that went out were true when sent: the first five in line, and milestones beyond.
    texts = [(e.json or {}).get("content") or "" for e in progress]
    told = [int(t.split("position ")[1].rstrip(".")) for t in texts if "queued: position" in t]
    assert all(p <= 5 or p in (10, 20) for p in told)
    assert told or per_second < 1  # with room in the budget, waiting jobs hear of their place
