"""Nothing the bot sends may ping @everyone, roles or other users (issue 10, item 1).

simcord records every REST call discord.py makes with its JSON body (``payload_json`` of multipart
uploads included), so these tests read ``allowed_mentions`` exactly as Discord would receive it. A body
without ``allowed_mentions`` lets Discord parse every mention in its text, so it counts as a failure too.
"""

from __future__ import annotations

import json

from simenv import World, assert_no_mass_mentions

HOSTILE = "@everyone free nitro at example.com <@&123456789012345678> <@987654321098765432>"


async def test_compose_reply_render_and_errors_allow_no_mass_mentions(world: World) -> None:
    # compose (status, progress, result), with a prompt that names everyone and a role
    result = await world.alice.slash(world.channel, "omost compose", prompt=f"a dragon battle {HOSTILE}")
    first = result.response
    assert first is not None and "Done" in first.content
    # a reply that refines the result
    await world.alice.send(world.channel, f"make it night {HOSTILE}", reply_to=first)
    assert "Done" in world.channel.last_message.content
    # a reply with a layout file whose echoed field is the attack: the error quotes it
    bad = json.dumps({"format": HOSTILE, "conditions": []}).encode()
    await world.bob.send(world.channel, "", reply_to=first, attachments=[("layout.json", bad)])
    answer = world.channel.last_message
    assert answer.author.bot and answer.content.startswith("⚠️") and "@everyone free nitro" in answer.content
    assert not answer.mention_everyone and answer.role_mentions == [] and answer.mentions == []
    # /omost render with a good file, and with the hostile one (ephemeral error)
    comfy = json.dumps(
        [{"rect": [0, 90, 0, 90], "prefixes": [HOSTILE], "suffixes": [], "color": [0, 0, 200]}]
    ).encode()
    rendered = await world.alice.slash(world.channel, "omost render", layout=("sea.json", comfy))
    assert "Done" in rendered.followups[0].content  # acknowledged privately; the status message follows
    refused = await world.alice.slash(world.channel, "omost render", layout=("bad.json", bad))
    assert refused.ephemeral and "@everyone free nitro" in refused.response.content
    # an engine failure
    world.engine.fail_next("render", RuntimeError(HOSTILE))
    failed = await world.alice.slash(world.channel, "omost compose", prompt="again")
    assert "failed" in failed.response.content
    # Edits and answers ping nobody; nothing in this flow is a notification.
    assert assert_no_mass_mentions(world, may_ping=set()) >= 12
    assert not any(m.mention_everyone for m in world.channel.history())


async def test_a_result_sent_as_a_new_message_pings_only_its_requester_once(world: World) -> None:
    world.env.inject_error("PATCH", "/webhooks/*", status=500, times=None)
    world.env.inject_error("PATCH", "/channels/*/messages/*", status=500, times=None)
    result = await world.alice.slash(world.channel, "omost compose", prompt=f"a dragon {HOSTILE}")
    delivered = world.channel.last_message
    assert delivered.id != result.response.id and "Done" in delivered.content
    # One mention of the requester (the result text names them already), and that is the only ping.
    assert delivered.content.count(f"<@{world.alice.id}>") == 1
    assert [u.id for u in delivered.mentions] == [world.alice.id] and not delivered.mention_everyone
    assert assert_no_mass_mentions(world, may_ping={world.alice.id}) >= 3
    world.env.errors  # acknowledge the injected failures  # noqa: B018
