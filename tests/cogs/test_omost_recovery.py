"""A restart of the bot: queued and running jobs resume, delivered results stay as they are, the requester
keeps their name (issue 10, items 4, 5 and 14)."""

from __future__ import annotations

from simenv import World


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
