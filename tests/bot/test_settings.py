"""Settings values, their resolution guild < channel, and turning user options into parameters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import BotConfig
from bot.db import Database
from bot.settings import SETTINGS, build_params, is_unfiltered_model, parse_setting, resolve_policy
from bot.storage import Storage
from omost_engine.errors import OmostError


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("unfiltered", "Yes", True),
        ("unfiltered", "off", False),
        ("steps", "30", 30),
        ("cfg", "4.5", 4.5),
        ("method", "AREA", "area"),
        ("size", "Square", "square"),
        ("size", "768x1344", "768x1344"),
        ("allowed_channels", "<#123456789> 987654321", [123456789, 987654321]),
        ("allowed_channels", "all", []),
        ("negative", " blurry ", "blurry"),
    ],
)
def test_parse_setting(key: str, text: str, value: object) -> None:
    assert parse_setting(key, text) == value


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("colour", "red", "unknown setting 'colour'"),
        ("steps", "0", "from 1 to 100"),
        ("cfg", "nan", "from 1 to 32"),
        ("method", "magic", "method must be omost or area"),
        ("size", "7x7", "width must be from 256"),
        ("allowed_channels", "#general", "channel mentions or ids"),
        ("negative", "", "1 to 1000 characters"),
    ],
)
def test_bad_settings(key: str, text: str, expected: str) -> None:
    with pytest.raises(OmostError, match=expected):
        parse_setting(key, text)


async def test_channel_settings_override_guild_settings(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    storage = Storage(db)
    config = BotConfig(llm="base-llm", max_queued_per_user=4)
    try:
        await storage.set_setting("guild", 1, "steps", 30)
        await storage.set_setting("guild", 1, "llm", "guild-llm")
        await storage.set_setting("channel", 10, "steps", 12)
        await storage.set_setting("channel", 10, "allowed_channels", [99])  # guild-only: ignored per channel
        policy = await resolve_policy(storage, config, guild_id=1, channel_id=10)
        assert (
            policy.render_params.steps == 12 and policy.llm == "guild-llm" and policy.allowed_channels == ()
        )
        assert policy.max_queued_per_user == 4
        elsewhere = await resolve_policy(storage, config, guild_id=1, channel_id=11)
        assert elsewhere.render_params.steps == 30
        assert (await resolve_policy(storage, config, guild_id=2, channel_id=12)).llm == "base-llm"
    finally:
        await db.close()


async def test_build_params_applies_options_and_limits(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        policy = await resolve_policy(Storage(db), BotConfig(), guild_id=1, channel_id=1)
    finally:
        await db.close()
    llm, llm_params, render = build_params(
        policy, {"size": "wide", "steps": 30, "temperature": 0.3, "cfg": None}, seed=77
    )
    assert llm is None and llm_params.temperature == 0.3 and llm_params.seed == 77
    assert (render.width, render.height, render.steps, render.seed, render.cfg) == (1344, 768, 30, 77, 5.0)
    limited = replace(policy, max_steps=10)
    assert build_params(limited, {}, seed=1)[2].steps == 10  # the default is lowered to the limit
    with pytest.raises(OmostError, match="steps must be at most 10 here"):
        build_params(limited, {"steps": 11}, seed=1)
    with pytest.raises(OmostError, match="is unfiltered"):
        build_params(policy, {"llm": "lllyasviel/omost-dolphin-2.9-llama3-8b"}, seed=1)
    assert build_params(replace(policy, unfiltered=True), {"llm": "x-dolphin"}, seed=1)[0] == "x-dolphin"


def test_unfiltered_models_are_recognised_in_one_place() -> None:
    assert is_unfiltered_model("lllyasviel/omost-dolphin-2.9-llama3-8b-4bits")
    assert is_unfiltered_model("/models/My-Dolphin-Finetune")
    assert not is_unfiltered_model("lllyasviel/omost-llama-3-8b-4bits")
    assert not is_unfiltered_model(None)


def test_every_setting_has_help_and_a_scope() -> None:
    for key, spec in SETTINGS.items():
        assert spec.help and spec.scopes, key
        assert set(spec.scopes) <= {"guild", "channel"}


ENDPOINT = "http://127.0.0.1:9/v1"
LOCAL = "lllyasviel/omost-phi-3-mini-128k-8bits"


async def policy_for(tmp_path: Path, config: BotConfig):  # noqa: ANN201
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        return await resolve_policy(Storage(db), config, guild_id=1, channel_id=1)
    finally:
        await db.close()


async def test_an_llm_endpoint_is_used_even_with_a_local_llm_configured(tmp_path: Path) -> None:
    from bot.engine_factory import create_engine
    from omost_engine.llm.openai_backend import OpenAIBackend

    config = BotConfig(device="cpu", llm=LOCAL, llm_endpoint=ENDPOINT)
    policy = await policy_for(tmp_path, config)
    llm, _, _ = build_params(policy, {}, seed=1)
    assert llm is None  # no model is written into the job: the engine's default, the endpoint, runs it
    backend = create_engine(config).chat_service.backend_for(llm)
    assert isinstance(backend, OpenAIBackend)  # constructing it calls nothing; a local model would load
    # A user's explicit choice of a local model is the way past it, here where a local LLM is configured.
    assert build_params(policy, {"llm": LOCAL}, seed=1)[0] == LOCAL


async def test_without_a_local_llm_configured_the_endpoint_is_the_only_llm(tmp_path: Path) -> None:
    policy = await policy_for(tmp_path, BotConfig(llm_endpoint=ENDPOINT))
    assert build_params(policy, {}, seed=1)[0] is None
    with pytest.raises(OmostError, match="local models such as 'some/model' are not enabled on this server"):
        build_params(policy, {"llm": "some/model"}, seed=1)
    # Without an endpoint nothing changes: the configured LLM is the default and any model may be chosen.
    local = await policy_for(tmp_path, BotConfig(llm=LOCAL))
    assert build_params(local, {}, seed=1)[0] == LOCAL
    assert build_params(local, {"llm": "some/model"}, seed=1)[0] == "some/model"


async def test_a_user_cannot_point_the_bot_at_a_server(tmp_path: Path) -> None:
    policy = await policy_for(tmp_path, BotConfig())
    with pytest.raises(OmostError, match="not a URL"):
        build_params(policy, {"llm": "http://169.254.169.254/latest"}, seed=1)
