"""Replies to results (refine, branch), layout files by reply and by /omost render."""

from __future__ import annotations

import json

import pytest
from simenv import DINOSAUR, DRAGON, World

from omost_engine.layout import Layout
from omost_engine.reply import parse_reply


async def compose(world: World, prompt: str = "a dragon battle", **options: object):
    result = await world.alice.slash(world.channel, "omost compose", prompt=prompt, **options)
    assert result.response is not None and "Done" in result.response.content, result.response
    return result.response.message


async def layout_of(message) -> list:
    files = {a.filename: a for a in message.attachments}
    return json.loads(await files["layout.json"].read())


async def count(world: World, table: str) -> int:
    row = await world.bot.storage.db.fetchone(f"SELECT COUNT(*) AS n FROM {table}")
    return int(row["n"])


async def test_reply_refines_the_conversation(world: World) -> None:
    first = await compose(world, seed=11)
    await world.alice.send(world.channel, "change the dragon to a dinosaur", reply_to=first)
    result = world.channel.last_message
    assert result.author.bot and result.reference is not None and result.reference.message_id != first.id
    assert "Done" in result.content
    # The LLM saw turn 1 (prompt and reply) and answered with the edited program.
    assert world.engine.histories[-1][0].content == "a dragon battle"
    assert world.engine.histories[-1][1].content == DRAGON
    assert Layout.from_json(await layout_of(result)).to_comfyui() == parse_reply(DINOSAUR).to_comfyui()
    # The refinement keeps the result's settings (same seed), so only the composition changes.
    assert (await layout_of(result))[0]["omost_bot"]["render"]["seed"] == 11
    # Reply again to the refined result: the history now holds two turns.
    await world.alice.send(world.channel, "and make it night", reply_to=result)
    assert [m.content for m in world.engine.histories[-1]][::2] == [
        "a dragon battle",
        "change the dragon to a dinosaur",
    ]


async def test_replying_to_an_older_result_branches(world: World) -> None:
    first = await compose(world)
    await world.alice.send(world.channel, "make it a dinosaur", reply_to=first)
    await world.bob.send(world.channel, "make it a unicorn", reply_to=first)  # anyone may branch
    # Both branches continue from turn 1 only.
    assert [len(h) for h in world.engine.histories] == [0, 2, 2]
    assert world.engine.histories[1] == world.engine.histories[2]
    turns = await world.bot.storage.db.fetchall("SELECT id, parent_id FROM turns ORDER BY id")
    assert [t["parent_id"] for t in turns] == [None, turns[0]["id"], turns[0]["id"]]


async def test_reply_to_a_message_that_is_not_a_result_is_ignored(world: World) -> None:
    note = await world.bob.send(world.channel, "hello")
    await world.alice.send(world.channel, "make it blue", reply_to=note)
    assert world.channel.last_message.author.id == world.alice.id
    assert await count(world, "jobs") == 0


async def test_reply_with_our_layout_file_renders_it_without_the_llm(world: World) -> None:
    first = await compose(world, seed=5, steps=6)
    data = json.dumps(await layout_of(first)).encode()
    chats = sum(1 for c in world.engine.calls if c[0] == "chat")
    await world.bob.send(world.channel, "", reply_to=first, attachments=[("layout.json", data)])
    result = world.channel.last_message
    assert "Done" in result.content
    assert sum(1 for c in world.engine.calls if c[0] == "chat") == chats  # no LLM turn
    # Our file carries its seed and settings: the render reproduces them.
    assert world.engine.calls[-1] == ("render", parse_reply(DRAGON).conditions[0].prefixes[0], 5)
    doc = await layout_of(result)
    assert (
        Layout.from_json(doc).to_comfyui() == parse_reply(DRAGON).to_comfyui()
        and doc[0]["omost_bot"]["render"]["steps"] == 6
    )


async def test_reply_with_a_comfyui_list_renders_it(world: World) -> None:
    first = await compose(world)
    comfy = [
        {"rect": [0, 90, 0, 90], "prefixes": ["a quiet harbour"], "suffixes": [], "color": [10, 60, 120]},
        {"rect": [30, 60, 10, 40], "prefixes": ["a red boat"], "suffixes": ["small"], "color": [200, 30, 30]},
    ]
    await world.alice.send(
        world.channel, "", reply_to=first, attachments=[("harbour.json", json.dumps(comfy).encode())]
    )
    result = world.channel.last_message
    assert "Done" in result.content and result.embeds[0].title == "a quiet harbour"
    assert world.engine.calls[-1][:2] == ("render", "a quiet harbour")
    # What was assumed for a file without settings is said, and kept in the new result's file.
    record = (await layout_of(result))[0]["omost_bot"]
    assert any("bare ComfyUI_omost list" in w for w in record["warnings"])


async def test_bad_layout_files_get_one_clear_reply_and_nothing_is_stored(world: World) -> None:
    first = await compose(world)
    jobs, layouts = await count(world, "jobs"), await count(world, "layouts")
    cases = [
        (b"{not json", "not valid JSON"),
        (json.dumps({"format": "something-else"}).encode(), "format"),
        (json.dumps([{"rect": [0, 90, 0, 90]}]).encode(), "prefixes"),
        (b" " * (600 * 1024), "at most 524288 bytes"),
    ]
    for data, expected in cases:
        await world.alice.send(world.channel, "", reply_to=first, attachments=[("layout.json", data)])
        answer = world.channel.last_message
        assert answer.author.bot and answer.content.startswith("⚠️") and expected in answer.content, (
            answer.content
        )
    assert (await count(world, "jobs"), await count(world, "layouts")) == (jobs, layouts)


async def test_render_command_takes_a_layout_attachment(world: World) -> None:
    comfy = [
        {"rect": [0, 90, 0, 90], "prefixes": ["a desert at noon"], "suffixes": [], "color": [230, 200, 120]}
    ]
    result = await world.alice.slash(
        world.channel,
        "omost render",
        layout=("desert.json", json.dumps(comfy).encode()),
        seed=99,
        size="square",
    )
    # Acknowledged privately before the file was read; the status message (now the result) follows for all,
    # and the private answer ends up linking to it (tests/cogs/test_omost_events.py).
    message = result.followups[0]
    assert result.ephemeral and result.response.content.startswith(
        ("📥 Job #1 is queued.", "✅ Job #1 is done")
    )
    assert not message.ephemeral and "Done" in message.content
    fields = {f.name: f.value for f in message.embeds[0].fields}
    assert fields["Seed"] == "99" and fields["Size"] == "1024x1024" and fields["LLM"].startswith("—")
    assert [c[0] for c in world.engine.calls] == ["render"]


async def test_render_command_with_a_bad_file_answers_ephemerally(world: World) -> None:
    result = await world.alice.slash(world.channel, "omost render", layout=("x.json", b"[]"))
    assert result.ephemeral and "conditions" in result.response.content
    assert await count(world, "jobs") == 0 and world.engine.calls == []


async def test_render_command_refuses_an_oversized_file_before_reading_it(world: World) -> None:
    result = await world.alice.slash(world.channel, "omost render", layout=("big.json", b" " * (600 * 1024)))
    assert (
        result.ephemeral
        and "the layout file is 614400 bytes; at most 524288 bytes" in result.response.content
    )
    assert await count(world, "jobs") == 0 and world.engine.calls == []


HOSTILE_RENDER = {"width": 2048, "height": 2048, "hr_scale": 2.0, "hr_steps": 100, "steps": 10}


def _file_with_render(render: dict, version: int = 2) -> bytes:
    comfy = [{"rect": [0, 90, 0, 90], "prefixes": ["a storm"], "suffixes": [], "color": [20, 20, 40]}]
    if version == 1:
        return json.dumps(
            {"format": "omost-bot-layout", "version": 1, "conditions": comfy, "meta": {"render": render}}
        ).encode()
    comfy[0]["omost_bot"] = {"format": "omost-bot-layout", "version": 2, "render": render}
    return json.dumps(comfy).encode()


async def test_a_layout_file_cannot_bypass_the_channels_limits(world: World) -> None:
    """Issue 10 item 2: the high-res pass (its size and its steps) is held to the channel's limits, through
    /omost render and through a reply, in both file versions; nothing is stored."""
    first = await compose(world)
    await world.admin.slash(world.channel, "omost settings set", key="max_steps", value="30", scope="channel")
    await world.admin.slash(
        world.channel, "omost settings set", key="max_megapixels", value="4.2", scope="channel"
    )
    jobs, layouts, renders = (
        await count(world, "jobs"),
        await count(world, "layouts"),
        len(world.engine.calls),
    )
    for version in (2, 1):
        data = _file_with_render(HOSTILE_RENDER, version)
        result = await world.alice.slash(world.channel, "omost render", layout=("storm.json", data))
        assert result.ephemeral and "hr_steps must be at most 30 here, not 100" in result.response.content
        assert "allowed: 1 to 30" in result.response.content
        await world.bob.send(world.channel, "", reply_to=first, attachments=[("storm.json", data)])
        answer = world.channel.last_message
        assert answer.author.bot and "hr_steps must be at most 30 here" in answer.content, answer.content
        # With the steps fixed, the size of the high-res output is what is refused.
        sized = _file_with_render({**HOSTILE_RENDER, "hr_steps": 20}, version)
        result = await world.alice.slash(world.channel, "omost render", layout=("storm.json", sized))
        assert (
            result.ephemeral
            and "the high-res output (hr_scale 2) 4096x4096 is 16.78 megapixels" in (result.response.content)
            and "at most 4.2 are allowed here" in result.response.content
        )
    assert (await count(world, "jobs"), await count(world, "layouts")) == (jobs, layouts)
    assert len(world.engine.calls) == renders
    # An option can bring a file back inside the limits (and the new file records that it did).
    fits = await world.alice.slash(
        world.channel,
        "omost render",
        layout=(
            "storm.json",
            _file_with_render({"width": 1024, "height": 1024, "hr_scale": 2.0, "steps": 40, "hr_steps": 20}),
        ),
        steps=12,
    )
    assert "Done" in fits.followups[0].content, fits.followups
    record = (await layout_of(fits.followups[0].message))[0]["omost_bot"]
    assert record["render"]["steps"] == 12 and record["overrides"] == ["steps: 40 -> 12 (the steps option)"]


async def test_a_file_asking_more_steps_than_allowed_is_refused_not_lowered(world: World) -> None:
    await world.admin.slash(world.channel, "omost settings set", key="max_steps", value="20")
    result = await world.alice.slash(
        world.channel, "omost render", layout=("x.json", _file_with_render({"steps": 50}))
    )
    assert result.ephemeral and "steps must be at most 20 here, not 50" in result.response.content


async def test_bad_render_settings_in_a_file_are_one_ephemeral_line(world: World) -> None:
    cases = [
        (_file_with_render({"cfg": float("nan")}).replace(b"NaN", b"NaN"), "NaN"),
        (_file_with_render({"stepz": 3}), "unknown field 'stepz' in omost_bot.render"),
        (
            _file_with_render({"seed": 1}).replace(b'"seed": 1', b'"seed": 1' + b"0" * 5000),
            "5001-digit number",
        ),
        (_file_with_render({}).replace(b'"version": 2', b'"version": 9'), "written by a newer omost-bot"),
        (
            json.dumps(
                {
                    "format": "omost-bot-layout",
                    "version": 1,
                    "conditions": [
                        {"rect": [0, 90, 0, 90], "prefixes": ["a"], "suffixes": [], "color": [1, 2, 3]}
                    ],
                    "meta": {"render": "fast"},
                }
            ).encode(),
            "meta.render 'fast' is not valid",
        ),
    ]
    for data, expected in cases:
        result = await world.alice.slash(world.channel, "omost render", layout=("x.json", data))
        assert (
            result.ephemeral and expected in result.response.content and "\n" not in result.response.content
        ), result.response.content
    assert await count(world, "jobs") == 0 and world.engine.calls == []


async def test_reply_with_a_picture_and_no_text_says_only_json_files_can_be_attached(world: World) -> None:
    first = await compose(world)
    jobs = await count(world, "jobs")
    await world.alice.send(world.channel, "", reply_to=first, attachments=[("cat.png", b"\x89PNG\r\n\x1a\n")])
    answer = world.channel.last_message
    assert answer.author.bot and answer.reference is not None
    assert answer.content.startswith("⚠️ only `.json` layout files can be attached; `cat.png` is not one")
    assert "prompt is empty" not in answer.content and await count(world, "jobs") == jobs
    # With text, a picture beside it is no layout: the text refines as usual.
    await world.alice.send(world.channel, "make it night", reply_to=first, attachments=[("cat.png", b"x")])
    assert "Done" in world.channel.last_message.content


async def test_render_command_refuses_a_file_that_is_not_json_with_the_same_words(world: World) -> None:
    result = await world.alice.slash(world.channel, "omost render", layout=("cat.png", b"\x89PNG\r\n\x1a\n"))
    assert result.ephemeral and result.response.content.startswith(
        "⚠️ only `.json` layout files can be attached; `cat.png` is not one"
    )
    assert await count(world, "jobs") == 0 and world.engine.calls == []


async def test_an_unexpected_failure_of_a_reply_is_logged_and_answered(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    first = await compose(world)

    async def broken(message: object, source: object) -> None:
        raise RuntimeError("database is on fire")

    world.bot.get_cog("Omost").actions._reply_job = broken  # type: ignore[union-attr]  # a stand-in for one failing step
    await world.alice.send(world.channel, "make it blue", reply_to=first)
    answer = world.channel.last_message
    assert answer.author.bot and answer.content.startswith("⚠️ something went wrong on my side")
    assert "fire" not in answer.content and world.env.errors == []  # nothing reached on_message's handler
    logged = [r for r in caplog.records if r.exc_info and "database is on fire" in str(r.exc_info[1])]
    assert len(logged) == 1 and "the reply" in logged[0].getMessage()
