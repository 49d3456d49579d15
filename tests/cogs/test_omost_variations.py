"""Issue 12 points 5 and 6 on Discord: ``count: 4`` and the Variations button make a 2x2 grid of four
seeds in one job; its buttons 1-4 post one image as a result of its own (from the kept image, without
rendering), Again renders four new seeds; Upscale runs the high-res pass on a result's kept image. All on a
real SQLite file through simcord, with the scripted engine."""

from __future__ import annotations

import asyncio
import io
import json

from PIL import Image
from simenv import World, assert_no_mass_mentions

from bot.storage import JobRecord
from omost_engine.variations import variation_seeds

GRID_LABELS = ["1", "2", "3", "4", "Again", "Layout & masks", "Delete"]
SINGLE_LABELS = ["Reroll", "Variations", "Upscale", "Edit regions", "Edit", "Layout & masks", "Delete"]


def labels(message: object) -> list[str]:
    return [c["label"] for row in message.components for c in row["components"]]  # type: ignore[attr-defined]


def fields(message: object) -> dict[str, str]:
    return {f.name: f.value for f in message.embeds[0].fields}  # type: ignore[attr-defined]


async def attachment(message: object, name: str) -> bytes:
    files = {a.filename: a for a in message.attachments}  # type: ignore[attr-defined]
    return await files[name].read()


async def job(world: World, job_id: int) -> JobRecord:
    record = await world.bot.storage.job(job_id)
    assert record is not None
    return record


async def job_count(world: World) -> int:
    row = await world.bot.storage.db.fetchone("SELECT COUNT(*) AS n FROM jobs")
    assert row is not None
    return int(row["n"])


async def grid(world: World, **options: object):
    result = await world.alice.slash(
        world.channel, "omost compose", prompt="a dragon battle", count=4, seed=10, steps=3, **options
    )
    assert result.response is not None and "Done" in result.response.content, result.response
    return result.response


async def test_count_4_renders_four_seeds_in_one_job_and_posts_a_grid(world: World) -> None:
    # The engine waits for the bot after each progress event (as in test_omost_compose): the edits are exact.
    world.engine.loop, world.engine.settled = asyncio.get_running_loop(), lambda: world.bot.jobs.idle
    message = await grid(world)
    assert "Pick an image with 1–4" in message.content
    assert labels(message) == GRID_LABELS
    assert fields(message)["Seeds"] == "1: 10 · 2: 11 · 3: 12 · 4: 13" and "Seed" not in fields(message)
    # One render call for the four seeds (batched), after one LLM turn.
    assert world.engine.renders == [(4, None)]
    assert [c for c in world.engine.calls if c[0] == "render"] == [
        ("render", c[1], seed) for c, seed in zip(world.engine.calls[1:], (10, 11, 12, 13), strict=True)
    ]
    picture = Image.open(io.BytesIO(await attachment(message, "grid.png")))
    assert picture.size == (2 * 48, 2 * 64)  # the scripted engine's 48x64 images, two by two
    record = json.loads(await attachment(message, "layout.json"))[0]["omost_bot"]
    assert record["render"]["seed"] == 10  # the grid's first image; the others follow it (seed + n)
    stored = await job(world, 1)
    assert stored.count == 4 and stored.state == "done"
    for index, seed in enumerate(variation_seeds(10, 4)):
        kept = await world.bot.storage.result_image(1, index)
        assert kept is not None and kept.seed == seed and kept.png.startswith(b"\x89PNG")
    # The status message showed the whole grid's progress.
    edits = [str(e.json) for e in world.env.http_requests if e.method == "PATCH" and e.json]
    assert any("diffusion step 2/3 · 4 images" in text for text in edits)


async def test_pick_posts_that_image_as_a_result_without_rendering(world: World) -> None:
    message = await grid(world)
    renders = len(world.engine.renders)
    picked = await world.bob.click(message, label="2")
    result = picked.response
    assert result is not None and not picked.ephemeral and "Done" in result.content
    assert len(world.engine.renders) == renders  # nothing rendered
    assert labels(result) == SINGLE_LABELS and fields(result)["Seed"] == "11"
    record = json.loads(await attachment(result, "layout.json"))[0]["omost_bot"]
    assert record["render"]["seed"] == 11 and record["job"] == 2
    # The very pixels of the grid's second cell.
    image = Image.open(io.BytesIO(await attachment(result, "image.png"))).convert("RGB")
    cells = Image.open(io.BytesIO(await attachment(message, "grid.png"))).convert("RGB")
    assert image.tobytes() == cells.crop((48, 0, 96, 64)).tobytes()
    new = await job(world, 2)
    assert new.state == "done" and new.count == 1 and new.render_params.seed == 11
    assert new.user_id == world.bob.id and new.result_message_id == result.id
    assert new.layout_id == (await job(world, 1)).layout_id and new.turn_id == (await job(world, 1)).turn_id
    # The pick is a result like any other: a reply refines it, its own image is kept for an upscale.
    assert (await world.bot.storage.result_image(2, 0)) is not None
    await world.alice.send(world.channel, "now a dinosaur", reply_to=result)
    assert world.engine.histories[-1][0].content == "a dragon battle"
    assert_no_mass_mentions(world, may_ping={world.alice.id, world.bob.id})
    # Deleting the grid deletes its kept images too.
    deleted = await world.alice.click(message, label="Delete")
    assert "Deleted" in deleted.response.content
    assert all([await world.bot.storage.result_image(1, n) is None for n in range(4)])


async def test_pick_after_the_images_were_pruned_renders_that_seed(world: World) -> None:
    message = await grid(world)
    # Another result fills the store's whole budget: the grid's images are pruned (oldest first).
    await world.bot.storage.store_images(99, [(1, b"x" * 1000)], keep_s=3600, keep_bytes=1000)
    assert await world.bot.storage.result_image(1, 2) is None
    picked = await world.alice.click(message, label="3")
    assert picked.response is not None and "Done" in picked.response.content
    (note,) = picked.followups
    assert "no longer kept" in note.content and "seed 12" in note.content
    assert world.engine.renders[-1] == (1, None) and world.engine.calls[-1][2] == 12
    assert fields(picked.response)["Seed"] == "12"


async def test_again_and_variations_render_four_new_seeds(world: World) -> None:
    message = await grid(world)
    again = await world.bob.click(message, label="Again")
    assert again.response is not None and labels(again.response) == GRID_LABELS
    seeds = [int(s.split(": ")[1]) for s in fields(again.response)["Seeds"].split(" · ")]
    assert seeds == list(variation_seeds(seeds[0], 4)) and seeds[0] != 10
    assert world.engine.renders[-1] == (4, None)
    again_job = await job(world, 2)
    assert again_job.count == 4 and again_job.layout_id == (await job(world, 1)).layout_id

    single = await world.alice.slash(world.channel, "omost compose", prompt="a castle", seed=3, steps=2)
    chats = len([c for c in world.engine.calls if c[0] == "chat"])
    varied = await world.bob.click(single.response, label="Variations")
    assert varied.response is not None and labels(varied.response) == GRID_LABELS
    assert world.engine.renders[-1] == (4, None)
    assert len([c for c in world.engine.calls if c[0] == "chat"]) == chats  # the same layout, no LLM turn
    assert (await job(world, 4)).count == 4


async def test_upscale_runs_only_the_high_res_pass_on_the_kept_image(world: World) -> None:
    world.engine.image_size = None  # images of the requested size / 8, so the upscale is visibly larger
    first = await world.alice.slash(
        world.channel, "omost compose", prompt="a dragon battle", seed=5, steps=3, size="512x512"
    )
    upscaled = await world.bob.click(first.response, label="Upscale")
    result = upscaled.response
    assert result is not None and "Done" in result.content
    assert world.engine.renders[-1] == (1, (64, 64))  # the kept 512x512/8 image was the base
    assert fields(result)["Size"] == "512x512 → 768x768 (high-res ×1.5)" and fields(result)["Seed"] == "5"
    before = Image.open(io.BytesIO(await attachment(first.response, "image.png")))
    after = Image.open(io.BytesIO(await attachment(result, "image.png")))
    assert after.size == (96, 96) and after.width > before.width
    assert "Upscale" not in labels(result)  # an upscaled image is not upscaled again
    record = await job(world, 2)
    assert record.base_job_id == 1 and record.render_params.hr_scale == 1.5


async def test_upscale_without_the_kept_image_renders_in_full(world: World) -> None:
    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", seed=5, steps=3)
    await world.bot.storage.drop_images(1)
    upscaled = await world.bob.click(first.response, label="Upscale")
    assert upscaled.response is not None and "Done" in upscaled.response.content
    assert world.engine.renders[-1] == (1, None)


async def test_a_channel_without_variations_refuses_them_and_stores_nothing(world: World) -> None:
    single = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", steps=2)
    await world.admin.slash(world.channel, "omost settings set", key="max_count", value="1", scope="channel")
    jobs, renders = await job_count(world), len(world.engine.renders)
    refused = await world.alice.slash(world.channel, "omost compose", prompt="a castle", count=4)
    assert refused.ephemeral and "max_count is 1" in refused.response.content
    clicked = await world.bob.click(single.response, label="Variations")
    assert clicked.ephemeral and "max_count is 1" in clicked.response.content
    assert "\n" not in clicked.response.content.strip()  # one line
    assert await job_count(world) == jobs and len(world.engine.renders) == renders


async def test_upscale_over_the_channels_megapixels_is_refused(world: World) -> None:
    first = await world.alice.slash(
        world.channel, "omost compose", prompt="a dragon battle", size="1024x1024", steps=2
    )
    await world.admin.slash(world.channel, "omost settings set", key="max_megapixels", value="1.2")
    jobs = await job_count(world)
    refused = await world.bob.click(first.response, label="Upscale")
    assert refused.ephemeral and "max_megapixels" in refused.response.content
    assert "1536x1536" in refused.response.content
    assert await job_count(world) == jobs


async def test_upscale_factor_is_a_channel_setting(world: World) -> None:
    await world.admin.slash(world.channel, "omost settings set", key="upscale_scale", value="2")
    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", steps=2)
    upscaled = await world.bob.click(first.response, label="Upscale")
    assert (await job(world, 2)).render_params.hr_scale == 2.0
    assert "(high-res ×2)" in fields(upscaled.response)["Size"]
    bad = await world.admin.slash(world.channel, "omost settings set", key="upscale_scale", value="1.05")
    assert bad.ephemeral and "above 1.05" in bad.response.content


async def test_a_restart_between_the_grid_and_the_pick(world: World) -> None:
    message = await grid(world)
    await world.restart()
    renders = len(world.engine.renders)
    picked = await world.bob.click(message, label="4")
    assert picked.response is not None and fields(picked.response)["Seed"] == "13"
    assert len(world.engine.renders) == renders
    again = await world.bob.click(message, label="Again")
    assert again.response is not None and labels(again.response) == GRID_LABELS


async def test_stale_buttons_get_one_clear_line(world: World) -> None:
    message = await grid(world)
    single = await world.alice.slash(world.channel, "omost compose", prompt="a castle", steps=2)
    db = world.bot.storage.db
    jobs = await job_count(world)
    # Buttons whose job changed under them (an older version's rows, a hand-edited database): an index past
    # the grid's images, an upscale of what the database says is a grid.
    await db.execute("UPDATE jobs SET count = 2 WHERE id = 1")
    past = await world.bob.click(message, label="4")
    assert past.ephemeral and "job #1 has no image 4 to pick (allowed: 1 to 2)" in past.response.content
    await db.execute("UPDATE jobs SET count = 4 WHERE id = 2")
    whole = await world.bob.click(single.response, label="Upscale")
    assert whole.ephemeral and "pick one (1–4) and upscale that" in whole.response.content
    await db.execute("UPDATE jobs SET count = 1, layout_id = NULL WHERE id = 2")
    for label, what in (("Upscale", "upscale"), ("Variations", "vary"), ("Reroll", "render again")):
        clicked = await world.bob.click(single.response, label=label)
        assert clicked.ephemeral and f"job #2 has no layout to {what}" in clicked.response.content
    # A grid whose layout is gone, then whose job row is gone.
    await db.execute("UPDATE jobs SET count = 4, layout_id = NULL WHERE id = 1")
    gone = await world.bob.click(message, label="2")
    assert gone.ephemeral and "job #1 has no layout to pick from" in gone.response.content
    again = await world.bob.click(message, label="Again")
    assert again.ephemeral and "job #1 has no layout to vary" in again.response.content
    await db.execute("DELETE FROM jobs WHERE id = 1")
    missing = await world.bob.click(message, label="1")
    assert missing.ephemeral and "job #1 does not exist" in missing.response.content
    assert await job_count(world) == jobs - 1  # nothing stored by any refusal


async def test_a_cancelled_grid_stops_as_one_job(world: World) -> None:
    await world.owner.slash(world.channel, "omost pause")
    queued = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", count=4)
    status = queued.response.message
    cancelled = await world.alice.click(status, label="Cancel")
    assert cancelled.ephemeral and "Cancelling job #1" in cancelled.response.content
    assert (await job(world, 1)).state == "cancelled" and (await job(world, 1)).count == 4
    await world.owner.slash(world.channel, "omost resume")
    assert world.engine.renders == []


async def test_render_command_with_count_4_and_a_layout_file(world: World) -> None:
    single = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", seed=40)
    layout_file = await attachment(single.response, "layout.json")
    result = await world.bob.slash(
        world.channel, "omost render", layout=("dragon.json", layout_file), count=4, steps=2
    )
    message = result.followups[0]
    assert "Pick an image" in message.content and labels(message) == GRID_LABELS
    # The file's seed, and three after it; the count is not a render setting the file records.
    assert fields(message)["Seeds"] == "1: 40 · 2: 41 · 3: 42 · 4: 43"
    assert world.engine.renders[-1] == (4, None) and (await job(world, 2)).count == 4
    record = json.loads(await attachment(message, "layout.json"))[0]["omost_bot"]
    assert record["overrides"] == ["steps: 25 -> 2 (the steps option)"]  # the default 25 in the file
