"""Job progress and results reach the ``/omost`` cog as events (bot/events.py): the job service publishes
each change once recorded, the cog subscribes on load and its actions follow their jobs."""

from __future__ import annotations

import json
import logging

import pytest
from simenv import World

from bot.events import JobUpdate
from omost_engine.errors import OmostError

DESERT = [
    {"rect": [0, 90, 0, 90], "prefixes": ["a desert at noon"], "suffixes": [], "color": [230, 200, 120]}
]


def cog(world: World):
    found = world.bot.get_cog("Omost")
    assert found is not None
    return found


async def test_the_cog_hears_every_stage_of_a_job_and_its_result_message(world: World) -> None:
    heard: list[JobUpdate] = []
    cog(world).actions.follow(1, lambda update: _record(heard, update))
    result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", seed=5)
    await world.bot.jobs.drain()
    await cog(world).actions.drain()
    phases = [u.phase for u in heard]
    assert phases[-1] == "done" and "llm" in phases and "render" in phases, phases
    assert phases.index("llm") < phases.index("render")
    render_fractions = [u.fraction for u in heard if u.phase == "render" and u.fraction is not None]
    assert render_fractions and render_fractions == sorted(render_fractions) and render_fractions[-1] == 1.0
    done = heard[-1]
    assert done.message_id == result.response.message.id and done.user_id == world.alice.id
    assert cog(world).actions.followers == {}  # a follower is dropped once its job ended


async def _record(heard: list[JobUpdate], update: JobUpdate) -> None:
    heard.append(update)


async def test_a_deferred_commands_private_answer_ends_with_a_link_to_the_result(world: World) -> None:
    result = await world.alice.slash(
        world.channel, "omost render", layout=("desert.json", json.dumps(DESERT).encode()), seed=9
    )
    await world.bot.jobs.drain()
    await cog(world).actions.drain()
    await world.env.settle()
    posted = result.followups[0]
    assert "Done" in posted.content
    answer = result.response.content  # the private answer, as Discord shows it now
    expected = f"https://discord.com/channels/{world.guild.id}/{world.channel.id}/{posted.id}"
    assert answer == f"✅ Job #1 is done: {expected}", answer


async def test_a_failed_job_is_said_in_the_private_answer(world: World) -> None:
    world.engine.fail_next("render", OmostError("the layout has no region the renderer can draw"))
    result = await world.alice.slash(
        world.channel, "omost render", layout=("desert.json", json.dumps(DESERT).encode())
    )
    await world.bot.jobs.drain()
    await cog(world).actions.drain()
    await world.env.settle()
    assert result.response.content == ("❌ Job #1 failed: the layout has no region the renderer can draw."), (
        result.response.content
    )


async def test_a_listener_that_raises_is_logged_and_changes_nothing_for_the_job(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(update: JobUpdate) -> None:
        raise RuntimeError("listener bug")

    unsubscribe = world.bot.jobs.events.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="bot.events"):
        result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    unsubscribe()
    assert "Done" in result.response.content
    logged = [r for r in caplog.records if "a listener of its updates failed" in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "job 1" in logged[0].getMessage()


async def test_an_unloaded_cog_no_longer_listens(world: World) -> None:
    events = world.bot.jobs.events
    assert len(events) == 1  # the cog's subscription
    await world.bot.remove_cog("Omost")
    assert len(events) == 0
