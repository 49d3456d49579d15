"""The region editor through the Discord simulator on a real SQLite file (issue 12): every control, the
forms, the render of an edited layout, the reply after an edit, restarts, access, bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image
from simcord.backend.errors import SetupError
from simenv import DRAGON, World, assert_no_mass_mentions, message_bodies

from bot.region_editor import EDIT_PROMPT
from omost_engine.clip_tokens import ClipTokenCounter
from omost_engine.editing import CanvasSpec
from omost_engine.layout import MAX_REGIONS, Layout
from omost_engine.reply import extract_code
from omost_engine.testing.tiny_sdxl import write_clip_vocab

SPEC = CanvasSpec.from_program(extract_code(DRAGON))


async def compose(world: World, who: Any = None, **options: object) -> discord.Message:
    who = who or world.alice
    result = await who.slash(world.channel, "omost compose", prompt="a dragon battle", **options)
    assert result.response is not None and "Done" in result.response.content
    return result.response.message


async def open_editor(world: World, result: discord.Message, who: Any = None) -> Any:
    opened = await (who or world.alice).click(result, label="Edit regions")
    assert opened.ephemeral, opened.response
    return opened


def current(message: Any) -> Any:
    """The editor message as it is now (a simcord response follows the message's edits)."""
    return getattr(message, "message", message)


def text_of(message: Any) -> str:
    return current(message).components[0].content


def control(editor_id: int, what: str) -> str:
    return f"omost:ed:{editor_id}:{what}"


def editor_id_of(message: Any) -> int:
    for component in current(message).components:
        for child in getattr(component, "children", []):
            custom_id = getattr(child, "custom_id", "") or ""
            if custom_id.startswith("omost:ed:"):
                return int(custom_id.split(":")[2])
    raise AssertionError("no editor controls")


def selects(message: Any) -> dict[str, Any]:
    out = {}
    for component in current(message).components:
        for child in getattr(component, "children", []):
            if isinstance(child, discord.components.SelectMenu):
                out[child.custom_id.split(":")[-1]] = child
    return out


def chosen(message: Any, field: str) -> str | None:
    defaults = [o.value for o in selects(message)[field].options if o.default]
    return defaults[0] if defaults else None


async def map_png(message: Any) -> Image.Image:
    files = {a.filename: a for a in current(message).attachments}
    return Image.open(io.BytesIO(await files["regions.png"].read()))


async def stored(world: World, editor_id: int) -> CanvasSpec:
    record = await world.bot.storage.editor(editor_id)
    assert record is not None
    return CanvasSpec.from_json(record.canvas)


async def form(
    world: World, who: Any, message: Any, editor_id: int, which: str, values: dict[str, str]
) -> Any:
    shown = await who.click(message, custom_id=control(editor_id, which))
    assert shown.modal is not None, shown.response
    prefilled = {
        c["custom_id"]: c.get("value", "") for row in shown.modal["components"] for c in row["components"]
    }
    assert set(values) <= set(prefilled), (values, prefilled)
    # Discord sends a field the user left alone with its prefilled value.
    return await who.submit_modal(shown, {**prefilled, **values})


async def test_the_editor_shows_the_map_and_region_controls_and_each_select_redraws_it(world: World) -> None:
    result = await compose(world)
    opened = await open_editor(world, result)
    message = opened.response
    eid = editor_id_of(message)
    assert "Region editor" in text_of(message) and f"{len(SPEC.regions)} region(s)" in text_of(message)
    assert current(message).flags.components_v2
    first_map = await map_png(message)
    assert max(first_map.size) == 512  # at the result's aspect ratio
    assert [o.value for o in selects(message)["region"].options] == [
        str(n) for n in range(len(SPEC.regions) + 1)
    ]
    assert chosen(message, "region") == "1" and chosen(message, "location") == SPEC.region(1).location
    await world.alice.select(message, ["2"], custom_id=control(eid, "region"))
    assert chosen(message, "region") == "2" and SPEC.region(2).description[:20] in text_of(message)
    await world.alice.select(message, ["on the left"], custom_id=control(eid, "location"))
    await world.alice.select(message, ["slightly to the upper"], custom_id=control(eid, "offset"))
    await world.alice.select(message, ["a small square area"], custom_id=control(eid, "area"))
    region = (await stored(world, eid)).region(2)
    assert (region.location, region.offset, region.area) == (
        "on the left",
        "slightly to the upper",
        "a small square area",
    )
    assert chosen(message, "area") == "a small square area"
    assert (await map_png(message)).tobytes() != first_map.tobytes()  # redrawn in place
    assert [c[0] for c in world.engine.calls] == ["chat", "render"]  # no render, no LLM for an edit


async def test_closer_and_farther_change_the_drawing_order(world: World) -> None:
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    first = SPEC.region(1).description
    await world.alice.click(message, custom_id=control(eid, "closer"))
    spec = await stored(world, eid)
    assert spec.region(2).description == first and chosen(message, "region") == "2"
    await world.alice.click(message, custom_id=control(eid, "farther"))
    await world.alice.click(message, custom_id=control(eid, "farther"))  # already the farthest
    assert "already the farthest" in text_of(message) and text_of(message).count("⚠️") == 1
    assert (await stored(world, eid)).region(1).description == first


async def test_text_style_and_colour_forms(world: World) -> None:
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    await form(
        world,
        world.alice,
        message,
        eid,
        "text",
        {
            "description": "A red fox.",
            "detailed_descriptions": "Fur like fire.\n\nA bushy tail.",
            "tags": "fox, red",
        },
    )
    region = (await stored(world, eid)).region(1)
    assert (region.description, region.detailed_descriptions, region.tags) == (
        "A red fox.",
        ("Fur like fire.", "A bushy tail."),
        "fox, red",
    )
    await form(
        world,
        world.alice,
        message,
        eid,
        "style",
        {"atmosphere": "Calm.", "style": "Ink.", "quality_meta": "Fine."},
    )
    region = (await stored(world, eid)).region(1)
    assert (region.atmosphere, region.style, region.quality_meta) == ("Calm.", "Ink.", "Fine.")
    await form(world, world.alice, message, eid, "color", {"color": "skybleu"})
    assert (await stored(world, eid)).region(1).color == "skyblue"
    assert "colour 'skybleu' -> 'skyblue'" in text_of(message)
    # The global description: text and colour only.
    await world.alice.select(message, ["0"], custom_id=control(eid, "region"))
    assert selects(message)["location"].disabled
    await form(world, world.alice, message, eid, "text", {"description": "A quiet forest, @everyone."})
    assert (await stored(world, eid)).global_.description == "A quiet forest, @everyone."
    assert "@everyone" in text_of(message)
    editor_bodies = [
        b for _, b in message_bodies(world.env.http_requests) if "Region editor" in json.dumps(b)
    ]
    assert len(editor_bodies) >= 5
    assert_no_mass_mentions(world, may_ping={world.alice.id})  # the editor's bodies too: nobody is pinged


async def test_bad_form_input_is_one_line_and_changes_nothing(world: World) -> None:
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    before = await stored(world, eid)
    await form(world, world.alice, message, eid, "color", {"color": "qqqqzzzz"})
    assert "⚠️" in text_of(message) and "qqqqzzzz" in text_of(message)
    await form(world, world.alice, message, eid, "text", {"description": "   "})
    assert "description of region 1 is empty" in text_of(message)
    await form(world, world.alice, message, eid, "text", {"detailed_descriptions": "x" * 3000})
    assert "2000" in text_of(message) or "characters" in text_of(message)
    with pytest.raises(SetupError, match="max_length"):  # Discord itself refuses a 5,000-character field
        await form(world, world.alice, message, eid, "text", {"tags": "y" * 5000})
    assert await stored(world, eid) == before


async def test_a_sub_prompt_over_one_clip_chunk_is_refused(world: World, tmp_path: Path) -> None:
    write_clip_vocab(tmp_path)
    cog: Any = world.bot.get_cog("OmostEditor")
    cog.editor.tokens = ClipTokenCounter(str(tmp_path), subfolder=None)  # the tiny models' CLIP tokenizer
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    await form(world, world.alice, message, eid, "text", {"tags": " ".join(["a"] * 60)})
    assert (await stored(world, eid)).region(1).tags == " ".join(["a"] * 60)
    await form(world, world.alice, message, eid, "text", {"tags": " ".join(["a"] * 90)})
    assert "CLIP tokens long" in text_of(message) and "at most 75" in text_of(message)
    assert (await stored(world, eid)).region(1).tags == " ".join(["a"] * 60)


async def test_add_and_delete_regions_and_their_limits(world: World) -> None:
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    count = len(SPEC.regions)
    await world.alice.click(message, custom_id=control(eid, "add"))
    spec = await stored(world, eid)
    assert len(spec.regions) == count + 1 and chosen(message, "region") == str(count + 1)
    await world.alice.click(message, custom_id=control(eid, "delete"))
    assert len((await stored(world, eid)).regions) == count
    for _ in range(count - 1):
        await world.alice.click(message, custom_id=control(eid, "delete"))
    await world.alice.click(message, custom_id=control(eid, "delete"))
    assert "last region and cannot be deleted" in text_of(message)
    assert len((await stored(world, eid)).regions) == 1
    for _ in range(MAX_REGIONS - 1):
        await world.alice.click(message, custom_id=control(eid, "add"))
    assert len((await stored(world, eid)).regions) == MAX_REGIONS
    options = selects(message)["region"].options
    assert len(options) == 25 and options[-1].value == str(MAX_REGIONS)  # a window around the selection
    await world.alice.click(message, custom_id=control(eid, "add"))
    assert f"at most {MAX_REGIONS}" in text_of(message)
    assert len((await stored(world, eid)).regions) == MAX_REGIONS


async def test_render_uses_the_same_seed_and_a_reply_continues_from_the_edited_program(world: World) -> None:
    result = await compose(world, seed=7, steps=3)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    await form(world, world.alice, message, eid, "text", {"description": "A silver unicorn."})
    rendered = await world.alice.click(message, custom_id=control(eid, "render"))
    assert rendered.response is not None and not rendered.ephemeral and "Done" in rendered.response.content
    fields = {f.name: f.value for f in rendered.response.embeds[0].fields}
    assert fields["Seed"] == "7" and fields["Steps · CFG"].startswith("3 ")
    files = {a.filename: a for a in rendered.response.attachments}
    layout = Layout.loads((await files["layout.json"].read()).decode())
    assert any("A silver unicorn." in c.prefixes for c in layout.regions)
    assert "A silver unicorn." in layout.meta["program"]
    assert [c[0] for c in world.engine.calls] == ["chat", "render", "render"]  # no LLM turn
    # A reply to the new result: the LLM's history ends with the edited program, not the old one.
    await world.alice.send(world.channel, "now at night", reply_to=rendered.response.message)
    history = world.engine.histories[-1]
    assert [m.content for m in history[:1]] == ["a dragon battle"]
    assert history[-2].content == EDIT_PROMPT
    assert "A silver unicorn." in history[-1].content and history[-1].content != DRAGON
    assert world.engine.calls[-2][:2] == ("chat", "now at night")


async def test_new_seed_and_the_channels_limits(world: World) -> None:
    result = await compose(world, seed=7, steps=40)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    await world.alice.click(message, custom_id=control(eid, "seed"))
    assert "New seed: on" in json.dumps([c.to_dict() for c in current(message).components])
    rendered = await world.alice.click(message, custom_id=control(eid, "render"))
    fields = {f.name: f.value for f in rendered.response.embeds[0].fields}
    assert fields["Seed"] != "7"
    await world.admin.slash(world.channel, "omost settings set", key="max_steps", value="30")
    refused = await world.alice.click(message, custom_id=control(eid, "render"))
    assert refused.ephemeral and "steps must be at most 30 here, not 40" in refused.response.content
    assert [c[0] for c in world.engine.calls] == ["chat", "render", "render"]


async def test_the_editor_survives_a_restart_mid_edit_and_the_token_expiry(world: World) -> None:
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    await world.alice.select(message, ["2"], custom_id=control(eid, "region"))
    await world.alice.select(message, ["on the right"], custom_id=control(eid, "location"))
    shown = await world.alice.click(
        message, custom_id=control(eid, "color")
    )  # a form open across the restart
    await world.restart()
    await world.alice.submit_modal(shown, {"color": "gold"})
    spec = await stored(world, eid)
    assert spec.region(2).location == "on the right" and spec.region(2).color == "gold"
    await world.env.advance_time(20 * 60)  # past the 15-minute interaction token of the opening click
    await world.alice.click(message, custom_id=control(eid, "closer"))
    assert chosen(message, "region") == "3" and (await stored(world, eid)).region(3).color == "gold"
    rendered = await world.alice.click(message, custom_id=control(eid, "render"))
    assert "Done" in rendered.response.content


async def test_strangers_and_the_editor_access_setting(world: World) -> None:
    result = await compose(world)
    refused = await world.bob.click(result, label="Edit regions")
    assert refused.ephemeral and "only the person who asked for job #1" in refused.response.content
    assert await world.bot.storage.editor(1) is None  # nothing stored
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    with pytest.raises(SetupError):  # the editor is ephemeral: nobody else can even see its controls
        await world.bob.click(message, custom_id=control(eid, "closer"))
    await world.admin.slash(world.channel, "omost settings set", key="editor_access", value="anyone")
    bobs = (await open_editor(world, result, world.bob)).response
    bob_id = editor_id_of(bobs)
    assert bob_id != eid
    await world.bob.click(bobs, custom_id=control(bob_id, "add"))
    assert len((await stored(world, bob_id)).regions) == len(SPEC.regions) + 1
    assert len((await stored(world, eid)).regions) == len(SPEC.regions)  # two editors, independent
    await world.admin.slash(world.channel, "omost settings reset", key="editor_access")
    await world.bob.click(bobs, custom_id=control(bob_id, "add"))
    assert len((await stored(world, bob_id)).regions) == len(SPEC.regions) + 1  # refused now


async def test_stale_buttons_and_missing_layouts(world: World) -> None:
    result = await compose(world)
    message = (await open_editor(world, result)).response
    eid = editor_id_of(message)
    second = await compose(world)
    await world.bot.storage.db.execute("UPDATE jobs SET layout_id = NULL WHERE id = 2")
    missing = await world.alice.click(second, label="Edit regions")
    assert missing.ephemeral and "layout of job #2 can no longer be found" in missing.response.content
    await world.alice.click(result, label="Delete")
    stale = await world.alice.click(message, custom_id=control(eid, "closer"))
    assert stale.ephemeral and "job #1 has no result to edit" in stale.response.content
