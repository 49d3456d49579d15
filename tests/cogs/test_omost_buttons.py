"""The buttons on results (reroll, layout & masks, edit, delete) and on status messages (cancel),
also after a restart: their state is the custom_id plus SQLite."""

from __future__ import annotations

from simenv import DRAGON, World

from omost_engine.layout import Layout
from omost_engine.reply import parse_reply
from omost_engine.testing.comfyui_loader import check_project_file


async def compose(world: World, **options: object):
    result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", **options)
    assert result.response is not None and "Done" in result.response.content
    return result.response.message


async def test_reroll_renders_the_same_layout_with_a_new_seed(world: World) -> None:
    first = await compose(world, seed=1, steps=3)
    result = await world.bob.click(first, label="Reroll")
    message = result.response
    assert message is not None and not result.ephemeral and "Done" in message.content
    fields = {f.name: f.value for f in message.embeds[0].fields}
    assert fields["Seed"] != "1" and fields["Steps · CFG"] == "3 · 5"
    assert [c[0] for c in world.engine.calls] == ["chat", "render", "render"]  # no second LLM turn
    files = {a.filename: a for a in message.attachments}
    reroll_file = (await files["layout.json"].read()).decode()
    assert Layout.loads(reroll_file).to_comfyui() == parse_reply(DRAGON).to_comfyui()
    assert check_project_file(reroll_file)[0]["omost_bot"]["render"]["seed"] == int(fields["Seed"])
    # The reroll belongs to the same turn: replying to it continues the same conversation.
    await world.alice.send(world.channel, "now a dinosaur", reply_to=message)
    assert world.engine.histories[-1][0].content == "a dragon battle"


async def test_layout_button_shows_sketch_masks_and_file_to_the_clicker_only(world: World) -> None:
    first = await compose(world)
    result = await world.bob.click(first, label="Layout & masks")
    assert result.ephemeral
    names = sorted(a.filename for a in result.response.attachments)
    assert names == ["layout.json", "masks.png", "sketch.png"]
    layout_file = next(a for a in result.response.attachments if a.filename == "layout.json")
    check_project_file((await layout_file.read()).decode())  # the schema and ComfyUI's loader accept it
    assert (
        "region 1" in result.response.content
        and f"{len(parse_reply(DRAGON).regions)} region" in result.response.content
    )


async def test_edit_button_opens_a_modal_whose_answer_is_the_next_turn(world: World) -> None:
    first = await compose(world)
    shown = await world.alice.click(first, label="Edit")
    assert shown.modal is not None and "Edit job" in shown.modal["title"]
    field_id = shown.modal["components"][0]["components"][0]["custom_id"]
    submitted = await world.alice.submit_modal(shown, {field_id: "make the dragon a dinosaur"})
    assert submitted.response is not None and "Done" in submitted.response.content
    assert world.engine.histories[-1][0].content == "a dragon battle"
    assert world.engine.calls[-2][:2] == ("chat", "make the dragon a dinosaur")


async def test_delete_is_for_the_requester_or_an_admin(world: World) -> None:
    first = await compose(world)
    refused = await world.bob.click(first, label="Delete")
    assert refused.ephemeral and "only the person who asked" in refused.response.content
    assert world.channel.last_message.id == first.id
    done = await world.alice.click(first, label="Delete")
    assert done.ephemeral and "Deleted" in done.response.content
    assert all(m.id != first.id for m in world.channel.history())
    job = await world.bot.storage.job(1)
    assert job is not None and job.result_message_id is None
    second = await compose(world)
    by_admin = await world.admin.click(second, label="Delete")
    assert "Deleted" in by_admin.response.content


async def test_buttons_keep_working_after_a_restart(world: World) -> None:
    first = await compose(world, seed=42)
    await world.restart()
    assert world.bot.synced_commands is False  # the tree did not change: no sync on restart
    layout = await world.bob.click(first, label="Layout & masks")
    assert layout.ephemeral and len(layout.response.attachments) == 3
    reroll = await world.bob.click(first, label="Reroll")
    assert reroll.response is not None and "Done" in reroll.response.content
    shown = await world.alice.click(first, label="Edit")
    field_id = shown.modal["components"][0]["components"][0]["custom_id"]
    edited = await world.alice.submit_modal(shown, {field_id: "at night"})
    assert "Done" in edited.response.content and world.engine.histories[-1][0].content == "a dragon battle"
    # A reply to the pre-restart result still refines it.
    await world.alice.send(world.channel, "with snow", reply_to=first)
    assert "Done" in world.channel.last_message.content
    deleted = await world.alice.click(first, label="Delete")
    assert "Deleted" in deleted.response.content


async def test_cancel_button_on_a_queued_job(world: World) -> None:
    await world.owner.slash(world.channel, "omost pause")
    queued = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    status = queued.response.message
    assert "next in the queue" in status.content
    labels = [c["label"] for row in queued.response.components for c in row["components"]]
    assert labels == ["Cancel"]
    refused = await world.bob.click(status, label="Cancel")
    assert refused.ephemeral and "only your own jobs" in refused.response.content
    done = await world.alice.click(status, label="Cancel")
    assert done.ephemeral and "Cancelling job #1" in done.response.content
    assert "was cancelled" in queued.response.content and queued.response.components == []
    job = await world.bot.storage.job(1)
    assert job is not None and job.state == "cancelled"
    await world.owner.slash(world.channel, "omost resume")
    assert world.engine.calls == []


async def test_reroll_and_edit_are_held_to_the_channels_limits_of_today(world: World) -> None:
    """Issue 10 item 2: every entry point's final parameters go through the one limit check."""
    first = await compose(world, steps=40)
    await world.admin.slash(world.channel, "omost settings set", key="max_steps", value="30")
    reroll = await world.bob.click(first, label="Reroll")
    assert reroll.ephemeral and "steps must be at most 30 here, not 40" in reroll.response.content
    shown = await world.alice.click(first, label="Edit")
    field_id = shown.modal["components"][0]["components"][0]["custom_id"]
    edited = await world.alice.submit_modal(shown, {field_id: "make it night"})
    assert edited.ephemeral and "steps must be at most 30 here" in edited.response.content
    await world.alice.send(world.channel, "make it night", reply_to=first)
    assert "steps must be at most 30 here" in world.channel.last_message.content
    assert [c[0] for c in world.engine.calls] == ["chat", "render"]  # nothing more ran
