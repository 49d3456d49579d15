"""/omost compose and its result through simcord: status message, throttled progress, files, embed."""

from __future__ import annotations

import asyncio
import json

import pytest
from simenv import DRAGON, World

from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.reply import parse_reply


def edits_of(world: World, message_id: int) -> list[dict]:
    """Bodies of every edit the bot made to one message (through the interaction or the channel)."""
    return [
        entry.json or {}
        for entry in world.env.http_requests
        if entry.method == "PATCH" and entry.path.endswith(f"/messages/{message_id}")
    ]


async def jobs_in_db(world: World) -> int:
    row = await world.bot.storage.db.fetchone("SELECT COUNT(*) AS n FROM jobs")
    return int(row["n"])


async def test_compose_result_has_image_layout_embed_and_buttons(world: World) -> None:
    result = await world.alice.slash(
        world.channel, "omost compose", prompt="a dragon battle", seed=7, steps=4
    )
    message = result.response
    assert result.acknowledged and not result.ephemeral and message is not None
    assert "Done" in message.content and str(world.alice.id) in message.content
    files = {a.filename: a for a in message.attachments}
    assert set(files) == {"image.png", "layout.json"}
    layout_doc = json.loads(await files["layout.json"].read())
    record = layout_doc[0]["omost_bot"]
    assert record["format"] == "omost-bot-layout" and record["version"] == 2
    assert Layout.from_json(layout_doc).to_comfyui() == parse_reply(DRAGON).to_comfyui()
    assert record["render"]["seed"] == 7 and record["render"]["steps"] == 4
    assert record["program"] and record["program"] in DRAGON and record["prompt"]
    embed = message.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Seed"] == "7" and fields["Size"] == "896x1152" and fields["LLM"] == "scripted-llm"
    assert fields["Steps · CFG"] == "4 · 5" and embed.image.url == "attachment://image.png"
    labels = [c["label"] for row in message.components for c in row["components"]]
    assert labels == ["Reroll", "Variations", "Upscale", "Edit regions", "Edit", "Layout & masks", "Delete"]
    job = await world.bot.storage.job_by_message(message.id)
    assert job is not None and job.state == "done" and job.render_params.seed == 7
    assert job.llm_model == "scripted-llm" and job.render_model == "scripted-sdxl"
    # The engine got the validated parameters.
    assert ("chat", "a dragon battle", 7) in world.engine.calls


async def test_status_message_shows_each_stage_and_is_throttled(world: World) -> None:
    # Each engine progress event moves the fake clock 1 s; edits must be >= 1.5 s apart except stage changes.
    world.engine.loop, world.engine.settled = asyncio.get_running_loop(), lambda: world.bot.jobs.idle
    result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", steps=10)
    message = result.response
    assert message is not None
    bodies = edits_of(world, message.id)
    texts = [b.get("content") or "" for b in bodies]
    assert any("LLM is writing" in t for t in texts)
    assert any("regions so far" in t for t in texts)
    render_texts = [t for t in texts if "diffusion step" in t]
    assert render_texts and "█" in render_texts[-1] and "left" in render_texts[-1]  # bar and ETA
    # 3 LLM events + 10 render events happen 1 s apart: throttling at 1.5 s keeps every second one. The
    # stage change is shown at once ("rendering…", step 0), so step 1 is held back and step 2 goes.
    progress_edits = [t for t in texts if "diffusion step" in t or "tokens" in t]
    assert len(progress_edits) == 6
    steps = [int(t.split("step ")[1].split("/")[0]) for t in progress_edits if "diffusion step" in t]
    assert steps == [2, 4, 6, 8, 10]
    assert texts.index(next(t for t in texts if "rendering…" in t)) < texts.index(progress_edits[1])
    # The layout preview is uploaded while the LLM works.
    assert any(any(a.get("filename") == "preview.png" for a in b.get("attachments", [])) for b in bodies)
    assert texts[-1].startswith("✅ Done")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 2001}, "at most 2000"),
        ({"prompt": "cat", "size": "huge"}, "size must be WIDTHxHEIGHT"),
        ({"prompt": "cat", "size": "1001x1000"}, "multiple of 8"),
        ({"prompt": "cat", "size": "4096x4096"}, "width must be from 256 to 2048"),
    ],
)
async def test_bad_input_gets_one_ephemeral_message_and_nothing_is_stored(
    world: World, options: dict, expected: str
) -> None:
    result = await world.alice.slash(world.channel, "omost compose", **options)
    assert result.ephemeral and result.response is not None
    assert expected in result.response.content and "Traceback" not in result.response.content
    assert await jobs_in_db(world) == 0 and world.engine.calls == []


async def test_engine_failure_is_reported_and_the_worker_goes_on(world: World) -> None:
    world.engine.fail_next("render", RuntimeError("CUDA out of memory"))
    failed = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    assert failed.response is not None
    assert "failed" in failed.response.content and "render step failed" in failed.response.content
    assert "CUDA" not in failed.response.content and not failed.response.attachments  # the log has it
    ok = await world.alice.slash(world.channel, "omost compose", prompt="again")
    assert ok.response is not None and "Done" in ok.response.content
    states = [r["state"] for r in await world.bot.storage.db.fetchall("SELECT state FROM jobs ORDER BY id")]
    assert states == ["failed", "done"]


async def test_oversized_image_is_reencoded_to_fit_the_upload_limit(world: World) -> None:
    world.engine.image_size = (900, 900)  # noisy PNG of about 2.4 MB
    world.bot.jobs.upload_limit = lambda tracker: 1024 * 1024  # type: ignore[method-assign]
    result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", steps=1)
    message = result.response
    assert message is not None
    names = sorted(a.filename for a in message.attachments)
    assert names == ["image.jpg", "layout.json"]
    notes = {f.name: f.value for f in message.embeds[0].fields}["Notes"]
    assert "JPEG" in notes
    assert sum(a.size for a in message.attachments) < 1024 * 1024


async def test_help_new_and_history(world: World) -> None:
    help_result = await world.alice.slash(world.channel, "omost help")
    assert help_result.ephemeral and "/omost compose" in help_result.response.content
    empty = await world.alice.slash(world.channel, "omost history")
    assert "no results" in empty.response.content
    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle", seed=3)
    history = await world.alice.slash(world.channel, "omost history")
    assert str(first.response.id) in history.response.content and "seed 3" in history.response.content
    # Without /omost new, the next compose continues the conversation (turn 2 gets the history) ...
    await world.alice.slash(world.channel, "omost compose", prompt="make the dragon a dinosaur")
    assert len(world.engine.histories[-1]) == 2
    # ... and after it, the conversation starts over.
    new = await world.alice.slash(world.channel, "omost new")
    assert new.ephemeral and "fresh conversation" in new.response.content
    await world.alice.slash(world.channel, "omost compose", prompt="a calm lake")
    assert world.engine.histories[-1] == []


async def test_unexpected_errors_become_one_generic_ephemeral_message(world: World) -> None:
    async def broken(**_: object) -> list:
        raise RuntimeError("database is on fire")

    world.bot.storage.user_results = broken  # type: ignore[method-assign]
    result = await world.alice.slash(world.channel, "omost history")
    assert result.ephemeral and "something went wrong on my side" in result.response.content
    assert "database is on fire" not in result.response.content and "Traceback" not in result.response.content
    errors = world.env.errors  # the error was logged (and reached the tree's handler), not shown
    assert len(errors) == 1 and "database is on fire" in str(errors[0].__cause__ or errors[0])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"steps": 500}, "steps"),
        ({"cfg": 0.5}, "cfg"),
        ({"temperature": 3.0}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"global_strength": 0.0}, "global_strength"),
        ({"max_new_tokens": 10}, "max_new_tokens"),
    ],
)
async def test_option_ranges_come_from_the_declarations_and_the_client_enforces_them(
    world: World, options: dict, expected: str
) -> None:
    """Issue 11: the options' ranges are the declarations' (app_commands.Range), so Discord refuses first."""
    import simcord

    from omost_engine.declared import bounds
    from omost_engine.params import LLMParams, RenderParams

    command = world.bot.tree.get_command("omost").get_command("compose")  # type: ignore[union-attr]
    payload = {o["name"]: o for o in command.to_dict(world.bot.tree)["options"]}
    for name in (
        "steps",
        "cfg",
        "seed",
        "global_strength",
        "region_strength",
        "temperature",
        "top_p",
        "max_new_tokens",
    ):
        model = LLMParams if name in ("temperature", "top_p", "max_new_tokens") else RenderParams
        assert (payload[name]["min_value"], payload[name]["max_value"]) == bounds(model, name), name
    assert [c["value"] for c in payload["method"]["choices"]] == ["omost", "area"]
    with pytest.raises(simcord.backend.errors.OptionError, match=expected):
        await world.alice.slash(world.channel, "omost compose", prompt="cat", **options)
    assert await jobs_in_db(world) == 0 and world.engine.calls == []


async def test_out_of_range_values_past_the_client_get_the_declarations_message(world: World) -> None:
    """A request that skips the client's checks (another client, a stale command) meets the same ranges."""
    from bot.settings import build_params, resolve_policy

    policy = await resolve_policy(
        world.bot.storage, world.bot.config, guild_id=world.guild.id, channel_id=world.channel.id
    )
    for options, expected in [
        ({"steps": 500}, "steps must be from 1 to 100, not 500"),
        ({"cfg": 0.5}, "cfg must be from 1 to 32, not 0.5"),
        ({"temperature": 3.0}, "temperature must be from 0 to 2, not 3.0"),
        ({"seed": -1}, "seed must be from 0 to 4294967295, not -1"),
    ]:
        with pytest.raises(OmostError, match=expected):
            build_params(policy, options, seed=1)
