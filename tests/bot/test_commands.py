"""``omost-bot run``: its checks without Discord, and the engine factory without loading models."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.config import BotConfig
from bot.db import find_migrations
from bot.engine_factory import create_engine


def test_run_check_opens_and_migrates_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMOST_MEMORY", "resident")
    assert main(["run", "--check", "--db", str(tmp_path / "bot.sqlite3")]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out and "memory=resident" in out and f"schema v{len(find_migrations())}" in out
    assert (tmp_path / "bot.sqlite3").is_file()


def test_run_without_token_or_with_bad_config_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main(["run"]) == 2
    assert "no Discord bot token" in capsys.readouterr().err
    monkeypatch.setenv("OMOST_MAX_QUEUE", "lots")
    assert main(["run", "--check"]) == 2
    err = capsys.readouterr().err
    assert "OMOST_MAX_QUEUE must be a whole number" in err and "Traceback" not in err


def test_engine_factory_wires_chat_and_render_to_one_model_manager() -> None:
    engine = create_engine(
        BotConfig(
            device="cpu",
            memory="resident",
            llm_endpoint="http://127.0.0.1:9/v1",
            sdxl="/models/sdxl.safetensors",
            sdxl_config="/models/sdxl-base-configs",
        )
    )
    assert engine.chat_service.default_llm == "http://127.0.0.1:9/v1"
    assert engine.renderer.default_model == "/models/sdxl.safetensors"
    assert engine.renderer.single_file_config == "/models/sdxl-base-configs"
    assert engine.renderer.memory is engine.chat_service.manager and engine.renderer.memory.mode == "resident"


def test_default_device_is_whatever_this_machine_has() -> None:
    import torch

    from omost_engine.memory import default_device

    config = BotConfig()
    assert config.device == "auto"
    engine = create_engine(config)
    assert engine.chat_service.manager.device == default_device()
    if not torch.cuda.is_available():  # a machine without a GPU must not be sent to cuda
        assert engine.chat_service.manager.device.type in ("cpu", "mps")


def test_run_uses_redis_workers_when_a_redis_url_is_configured(tmp_path: Path) -> None:
    from bot.commands import build_bot
    from bot.distributed.backend import RedisJobBackend
    from bot.engine_factory import CombinedEngine
    from bot.jobs import InProcessJobBackend

    config = BotConfig(db=tmp_path / "bot.sqlite3", device="cpu", max_queue=7)
    none_toml = tmp_path / "none.toml"
    redis_bot = build_bot(config, config_path=none_toml,
                          environ={"OMOST_REDIS_URL": "redis://127.0.0.1:9/0", "OMOST_REDIS_PREFIX": "t"})
    assert isinstance(redis_bot.backend, RedisJobBackend)
    assert redis_bot.engine is None  # the workers own the models
    assert redis_bot.backend.config.prefix == "t" and redis_bot.backend.max_queue == 7

    local_bot = build_bot(config, config_path=none_toml, environ={})
    assert isinstance(local_bot.backend, InProcessJobBackend)
    assert isinstance(local_bot.engine, CombinedEngine) and local_bot.backend.engine is local_bot.engine
