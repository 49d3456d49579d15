"""``omost-bot run``: its checks without Discord, and the engine factory without loading models."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from bot.config import BotConfig
from bot.db import find_migrations
from bot.engine_factory import create_engine


def test_run_check_reads_the_database_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMOST_MEMORY", "resident")
    monkeypatch.setenv("DISCORD_TOKEN", "t")
    assert main(["run", "--check"]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out and "memory=resident" in out and "does not exist yet" in out
    assert list(tmp_path.iterdir()) == []  # checking creates nothing in the current folder

    import asyncio

    from bot.db import Database

    async def make() -> None:
        await (await Database.open(tmp_path / "bot.sqlite3")).close()

    asyncio.run(make())
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["run", "--check", "--db", str(tmp_path / "bot.sqlite3")]) == 0
    assert f"schema v{len(find_migrations())}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("environ", "toml", "expected"),
    [
        ({}, "", "no Discord bot token"),
        ({"DISCORD_TOKEN": "t", "OMOST_DEVICE": "gpu9"}, "", "OMOST_DEVICE must be auto or a torch device"),
        (
            {"DISCORD_TOKEN": "t", "OMOST_REDIS_URL": "redis://x:notaport/0"},
            "",
            "OMOST_REDIS_URL: the Redis URL 'redis://x:notaport/0' has port 'notaport'",
        ),
        (
            {"DISCORD_TOKEN": "t"},
            '[redis]\nurl = "redis://x:6379/0"\nspeed = 3\n',
            "unknown key 'speed' in [redis]",
        ),
        ({"DISCORD_TOKEN": "t"}, 'token = "t"\n', "'token' is at the top level"),
    ],
)
def test_run_check_reports_each_problem_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    toml: str,
    expected: str,
) -> None:
    """Issue 10, item 16: each problem is one line and exit 2, and nothing is created while checking."""
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "OMOST_CONFIG", "OMOST_DEVICE", "OMOST_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "conf" / "omost-bot.toml"
    config.parent.mkdir()
    config.write_text(toml)
    assert main(["run", "--check", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]


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
    redis_bot = build_bot(
        config,
        config_path=none_toml,
        environ={"OMOST_REDIS_URL": "redis://127.0.0.1:9/0", "OMOST_REDIS_PREFIX": "t"},
    )
    assert isinstance(redis_bot.backend, RedisJobBackend)
    assert redis_bot.engine is None  # the workers own the models
    assert redis_bot.backend.config.prefix == "t" and redis_bot.backend.max_queue == 7

    local_bot = build_bot(config, config_path=none_toml, environ={})
    assert isinstance(local_bot.backend, InProcessJobBackend)
    assert isinstance(local_bot.engine, CombinedEngine) and local_bot.backend.engine is local_bot.engine
