"""/omost settings (admins only), allowed channels, the unfiltered-model opt-in, bot permissions, rate limits."""

from __future__ import annotations

import discord
import pytest
from simenv import World


async def test_settings_are_for_admins_only(world: World) -> None:
    for command, options in (
        ("omost settings show", {}),
        ("omost settings set", {"key": "steps", "value": "10"}),
        ("omost settings reset", {"key": "steps"}),
    ):
        result = await world.alice.slash(world.channel, command, **options)
        assert result.ephemeral and "only admins" in result.response.content
    assert await world.bot.storage.settings("guild", world.guild.id) == {}


async def test_guild_and_channel_defaults_apply_to_compose(world: World) -> None:
    await world.admin.slash(world.channel, "omost settings set", key="steps", value="12")
    await world.admin.slash(world.channel, "omost settings set", key="size", value="square")
    other = world.guild.create_text_channel("other")
    await world.admin.slash(world.channel, "omost settings set", key="steps", value="7", scope="channel")
    here = await world.alice.slash(world.channel, "omost compose", prompt="cat")
    there = await world.alice.slash(other, "omost compose", prompt="dog")
    fields_here = {f.name: f.value for f in here.response.embeds[0].fields}
    fields_there = {f.name: f.value for f in there.response.embeds[0].fields}
    assert fields_here["Steps · CFG"].startswith("7 ") and fields_here["Size"] == "1024x1024"
    assert fields_there["Steps · CFG"].startswith("12 ") and fields_there["Size"] == "1024x1024"
    shown = await world.admin.slash(world.channel, "omost settings show")
    assert (
        "`steps` = 7 (channel)" in shown.response.content
        and "`size` = square (server)" in shown.response.content
    )
    reset = await world.admin.slash(world.channel, "omost settings reset", key="steps", scope="channel")
    assert "back to its default" in reset.response.content
    again = await world.alice.slash(world.channel, "omost compose", prompt="cat")
    assert {f.name: f.value for f in again.response.embeds[0].fields}["Steps · CFG"].startswith("12 ")


async def test_bad_setting_values_are_refused(world: World) -> None:
    cases = [
        ({"key": "steps", "value": "500"}, "from 1 to 100"),
        ({"key": "unfiltered", "value": "maybe"}, "true or false"),
        ({"key": "size", "value": "big"}, "size must be"),
        ({"key": "allowed_channels", "value": "all", "scope": "channel"}, "whole server"),
    ]
    for options, expected in cases:
        result = await world.admin.slash(world.channel, "omost settings set", **options)
        assert result.ephemeral and expected in result.response.content, result.response.content
    assert await world.bot.storage.settings("guild", world.guild.id) == {}


async def test_limits_hold_user_options(world: World) -> None:
    await world.admin.slash(world.channel, "omost settings set", key="max_steps", value="20")
    await world.admin.slash(world.channel, "omost settings set", key="max_megapixels", value="1.1")
    steps = await world.alice.slash(world.channel, "omost compose", prompt="cat", steps=30)
    assert steps.ephemeral and "at most 20" in steps.response.content
    size = await world.alice.slash(world.channel, "omost compose", prompt="cat", size="1280x1280")
    assert size.ephemeral and "1.64 megapixels; at most 1.1 are allowed" in size.response.content
    fits = await world.alice.slash(
        world.channel, "omost compose", prompt="cat"
    )  # default steps lowered to 20
    assert {f.name: f.value for f in fits.response.embeds[0].fields}["Steps · CFG"].startswith("20 ")
    ok = await world.alice.slash(world.channel, "omost compose", prompt="cat", steps=20, size="square")
    assert "Done" in ok.response.content


async def test_allowed_channels(world: World) -> None:
    art = world.guild.create_text_channel("art")
    result = await world.admin.slash(
        world.channel, "omost settings set", key="allowed_channels", value=f"<#{art.id}>"
    )
    assert result.ephemeral
    refused = await world.alice.slash(world.channel, "omost compose", prompt="cat")
    assert (
        refused.ephemeral
        and "not enabled in this channel" in refused.response.content
        and str(art.id) in refused.response.content
    )
    ok = await world.alice.slash(art, "omost compose", prompt="cat")
    assert "Done" in ok.response.content


async def test_unfiltered_model_needs_the_admin_opt_in(world: World) -> None:
    model = "lllyasviel/omost-dolphin-2.9-llama3-8b-4bits"
    refused = await world.alice.slash(world.channel, "omost compose", prompt="cat", llm=model)
    assert refused.ephemeral and "unfiltered" in refused.response.content
    local_copy = await world.alice.slash(
        world.channel, "omost compose", prompt="cat", llm="/models/my-dolphin"
    )
    assert "unfiltered" in local_copy.response.content
    other = world.guild.create_text_channel("nsfw-art")
    await world.admin.slash(other, "omost settings set", key="unfiltered", value="true", scope="channel")
    still = await world.alice.slash(world.channel, "omost compose", prompt="cat", llm=model)
    assert "unfiltered" in still.response.content
    ok = await world.alice.slash(other, "omost compose", prompt="cat", llm=model)
    assert "Done" in ok.response.content and world.engine.calls[-2][:2] == ("chat", "cat")
    assert {f.name: f.value for f in ok.response.embeds[0].fields}["LLM"] == model


@pytest.mark.parametrize(
    ("permission", "label"),
    [("attach_files", "Attach Files"), ("embed_links", "Embed Links"), ("send_messages", "Send Messages")],
)
async def test_missing_bot_permissions_are_explained(world: World, permission: str, label: str) -> None:
    me = world.guild.me
    assert me is not None
    locked = world.guild.create_text_channel(
        "locked", overwrites={me: discord.PermissionOverwrite(**{permission: False})}
    )
    result = await world.alice.slash(locked, "omost compose", prompt="cat")
    assert result.ephemeral and f"missing the {label} permission" in result.response.content
    assert world.engine.calls == []


@pytest.mark.bot_config(rate_limit=2)
async def test_rate_limit_per_user(world: World) -> None:
    for prompt in ("one", "two"):
        assert (
            "Done"
            in (await world.alice.slash(world.channel, "omost compose", prompt=prompt)).response.content
        )
    third = await world.alice.slash(world.channel, "omost compose", prompt="three")
    assert third.ephemeral and "limit of 2 jobs per 10 minutes" in third.response.content
    assert "Done" in (await world.bob.slash(world.channel, "omost compose", prompt="bob")).response.content
    await world.admin.slash(world.channel, "omost settings set", key="rate_limit", value="5")
    assert "Done" in (await world.alice.slash(world.channel, "omost compose", prompt="four")).response.content


async def test_llm_suggestions_hide_unfiltered_models_unless_enabled(world: World) -> None:
    choices = await world.alice.autocomplete(world.channel, "omost compose", "llm", "", prompt="cat")
    values = [c["value"] for c in choices]
    assert "lllyasviel/omost-llama-3-8b-4bits" in values and not any("dolphin" in v for v in values)
    await world.admin.slash(
        world.channel, "omost settings set", key="unfiltered", value="true", scope="channel"
    )
    choices = await world.alice.autocomplete(world.channel, "omost compose", "llm", "dolphin", prompt="cat")
    assert choices and all("dolphin" in c["value"] for c in choices)


async def test_refinements_of_an_unfiltered_result_need_the_opt_in_still(world: World) -> None:
    model = "lllyasviel/omost-dolphin-2.9-llama3-8b-4bits"
    await world.admin.slash(
        world.channel, "omost settings set", key="unfiltered", value="true", scope="channel"
    )
    first = await world.alice.slash(world.channel, "omost compose", prompt="cat", llm=model)
    result = first.response.message
    await world.admin.slash(world.channel, "omost settings reset", key="unfiltered", scope="channel")
    await world.alice.send(world.channel, "make it a tiger", reply_to=result)
    answer = world.channel.last_message
    assert answer.content.startswith("⚠️") and "unfiltered" in answer.content
    shown = await world.alice.click(result, label="Edit")
    field_id = shown.modal["components"][0]["components"][0]["custom_id"]
    edited = await world.alice.submit_modal(shown, {field_id: "a tiger"})
    assert edited.ephemeral and "unfiltered" in edited.response.content
    assert [c[0] for c in world.engine.calls] == ["chat", "render"]


async def test_decoding_switches_are_on_by_default_and_settings_turn_them_off(world: World) -> None:
    def switches(index: int) -> tuple[bool, int, bool]:
        params = world.engine.llm_params[index]
        return params.prompt_lookup, params.prompt_lookup_tokens, params.grammar

    first = await world.alice.slash(world.channel, "omost compose", prompt="a dragon")
    assert switches(0) == (True, 20, True)
    await world.admin.slash(world.channel, "omost settings set", key="grammar", value="off")
    await world.admin.slash(
        world.channel, "omost settings set", key="prompt_lookup", value="false", scope="channel"
    )
    await world.admin.slash(world.channel, "omost settings set", key="prompt_lookup_tokens", value="6")
    await world.alice.slash(world.channel, "omost compose", prompt="a castle")
    assert switches(1) == (False, 6, False)
    job = await world.bot.storage.job(2)
    assert job is not None and job.llm_params.grammar is False  # stored with the job
    # A refinement of an older result uses the channel's switches now, not those of the result it refines.
    await world.alice.send(world.channel, "change the dragon to a dinosaur", reply_to=first.response)
    assert switches(2) == (False, 6, False)
    bad = await world.admin.slash(
        world.channel, "omost settings set", key="prompt_lookup_tokens", value="500"
    )
    assert "prompt_lookup_tokens must be a whole number from 1 to 100" in bad.response.content
    shown = await world.admin.slash(world.channel, "omost settings show")
    assert "`grammar` = False (server)" in shown.response.content
    assert "`prompt_lookup` = False (channel)" in shown.response.content
