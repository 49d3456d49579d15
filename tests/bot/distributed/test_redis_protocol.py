"""The wire formats and the configuration: round trips, and one clear error for each bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bot.config import BotConfig
from bot.distributed.backend import RedisJobBackend, backend_from_config
from bot.distributed.client import RedisConfig
from bot.distributed.protocol import JobMessage, Keys, WireEvent, png_bytes, png_image, progress_data
from bot.distributed.worker import WorkerConfig
from bot.jobs import JobSpec, StageTimeouts
from omost_engine.engine import ChatMessage
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.testing.scripted_engine import ScriptedEngine


@pytest.fixture(scope="module")
def layout() -> Layout:
    return ScriptedEngine().chat([], "a harbour at night", LLMParams()).layout


def test_job_message_round_trip(layout: Layout) -> None:
    spec = JobSpec(
        job_id=7,
        prompt="make the boat red",
        llm="omost-llama",
        history=(ChatMessage("user", "a harbour"), ChatMessage("assistant", "```python\n...\n```")),
        llm_params=LLMParams(temperature=0.3, seed=5),
        render_params=RenderParams(steps=12, cfg=4.5),
        layout=layout,
        sdxl="realvis",
    )
    message = JobMessage(spec=spec, user_id=42, timeouts=StageTimeouts(llm=30, render=60), max_attempts=2)
    back = JobMessage.from_json(message.to_json())
    assert back.spec.history == spec.history and back.spec.prompt == spec.prompt
    assert back.spec.llm_params == spec.llm_params and back.spec.render_params == spec.render_params
    assert back.spec.layout is not None and back.spec.layout.conditions == layout.conditions
    assert (back.spec.llm, back.spec.sdxl, back.user_id, back.max_attempts) == (
        "omost-llama",
        "realvis",
        42,
        2,
    )
    assert back.timeouts == StageTimeouts(llm=30, render=60)
    assert back.job_id == "7"


def test_a_grid_and_an_upscale_message_round_trip(layout: Layout) -> None:
    """The count travels in the message; an upscale's base does not (its bytes go to the run's base key):
    the message only says there is one."""
    from PIL import Image

    spec = JobSpec(
        job_id=8,
        prompt="",
        history=(),
        llm=None,
        llm_params=LLMParams(),
        render_params=RenderParams(hr_scale=1.5),
        layout=layout,
        count=4,
        base=Image.new("RGB", (8, 8)),
    )
    data = JobMessage(spec=spec).to_json()
    assert data["count"] == 4 and data["base"] is True and len(str(data)) < 20_000
    back = JobMessage.from_json(data)
    assert back.spec.count == 4 and back.has_base and back.spec.base is None
    assert JobMessage.from_json(back.to_json()).has_base  # a record read back after a restart keeps it
    plain = JobMessage.from_json({k: v for k, v in data.items() if k not in ("count", "base")})
    assert plain.spec.count == 1 and not plain.has_base  # a message from an older bot
    with pytest.raises(OmostError) as caught:
        JobMessage.from_json({**data, "count": 5})
    assert caught.value.parameter == "count"


@pytest.mark.parametrize(
    ("change", "parameter"),
    [
        ({"v": 99}, "v"),
        ({"history": [["system", "x"]]}, "history"),
        ({"job_id": True}, "job_id"),
        ({"render_params": {"steps": 0}}, "steps"),
        ({"llm_timeout": -1}, "llm_timeout"),
        ({"prompt": 5}, "prompt"),
        ({"layout": [{"rect": [0, 90, 0, 90]}]}, None),  # Layout's own error
    ],
)
def test_bad_job_messages_get_one_clear_error(change: dict, parameter: str | None) -> None:
    data = JobMessage(
        spec=JobSpec(
            job_id=1, prompt="x", history=(), llm=None, llm_params=LLMParams(), render_params=RenderParams()
        )
    ).to_json()
    with pytest.raises(OmostError) as error:
        JobMessage.from_json({**data, **change})
    if parameter is not None:
        assert error.value.parameter == parameter


def test_wire_event_round_trip_and_progress(layout: Layout) -> None:
    llm = LLMProgress(
        tokens=12, tokens_per_second=30.5, text="canvas = Canvas()", conditions=tuple(layout.conditions[:2])
    )
    type_, data = progress_data(llm)
    event = WireEvent(type=type_, job_id="3", attempt=2, worker="gpu-1", data=data)
    back = WireEvent.decode({k.encode(): v for k, v in event.encode().items()}, b"1-0")
    assert (back.type, back.job_id, back.attempt, back.worker, back.stream_id) == (
        "llm",
        "3",
        2,
        "gpu-1",
        "1-0",
    )
    assert back.progress() == llm
    type_, data = progress_data(RenderProgress(step=3, total=20, stage="hires"))
    assert WireEvent(type=type_, job_id="3", data=data).progress() == RenderProgress(
        step=3, total=20, stage="hires"
    )
    counted = RenderProgress(step=3, total=10, stage="hires", run_step=23, run_total=30, images=4)
    type_, data = progress_data(counted)
    encoded = WireEvent(type=type_, job_id="3", data=data).encode()
    assert WireEvent.decode({k.encode(): v for k, v in encoded.items()}).progress() == counted
    assert (
        WireEvent(type="result", job_id="3").terminal
        and WireEvent(type="result", job_id="3").progress() is None
    )


def test_png_round_trip() -> None:
    from PIL import Image

    image = Image.new("RGB", (5, 3), (10, 20, 30))
    assert png_image(png_bytes(image)).getpixel((4, 2)) == (10, 20, 30)


def test_keys_share_one_prefix() -> None:
    keys = Keys("bot2")
    names = [
        keys.queue(),
        keys.queue("sdxl-turbo"),
        keys.events,
        keys.cancel_channel,
        keys.cancelled("1"),
        keys.result("1"),
        keys.worker("w"),
        keys.workers,
        keys.jobs,
    ]
    assert all(name.startswith("bot2:") for name in names) and len(set(names)) == len(names)


def test_redis_config_from_toml_and_environment(tmp_path: Path) -> None:
    assert RedisConfig.load(environ={}, path=tmp_path / "missing.toml") is None
    toml = tmp_path / "omost-bot.toml"
    toml.write_text('[bot]\nmax_queue = 5\n\n[redis]\nurl = "redis://gpu-box:6379/2"\nqueue = "big"\n')
    config = RedisConfig.load(environ={}, path=toml)
    assert config is not None and (config.url, config.queue, config.prefix) == (
        "redis://gpu-box:6379/2",
        "big",
        "omost",
    )
    config = RedisConfig.load(
        environ={
            "OMOST_REDIS_URL": "redis://other:1/0",
            "OMOST_REDIS_WATCHDOG_S": "0.5",
            "OMOST_REDIS_MAX_ATTEMPTS": "5",
        },
        path=toml,
    )
    assert config is not None and config.url == "redis://other:1/0" and config.watchdog_s == 0.5
    assert RedisJobBackend(config).max_attempts == 5


@pytest.mark.parametrize(
    ("environ", "toml", "parameter"),
    [
        ({"OMOST_REDIS_URL": "http://localhost"}, "", "url"),
        ({"OMOST_REDIS_URL": "redis://x", "OMOST_REDIS_WATCHDOG_S": "often"}, "", "watchdog_s"),
        ({}, '[redis]\nurl = "redis://x"\nspeed = 3\n', "speed"),
        ({}, '[redis]\nurl = "redis://x"\nmax_attempts = 0\n', "max_attempts"),
    ],
)
def test_bad_redis_settings_name_the_setting(
    tmp_path: Path, environ: dict, toml: str, parameter: str
) -> None:
    path = tmp_path / "omost-bot.toml"
    path.write_text(toml)
    with pytest.raises(OmostError) as error:
        RedisConfig.load(environ=environ, path=path)
    assert error.value.parameter == parameter


def test_in_process_queue_stays_the_default(tmp_path: Path) -> None:
    config = BotConfig(max_queue=7, llm_timeout_s=11.0, render_timeout_s=22.0)
    assert backend_from_config(config, environ={}, path=tmp_path / "none.toml") is None
    backend = backend_from_config(
        config, environ={"OMOST_REDIS_URL": "redis://localhost:6379/0"}, path=tmp_path / "none.toml"
    )
    assert isinstance(backend, RedisJobBackend)
    assert backend.max_queue == 7 and backend.timeouts == StageTimeouts(llm=11.0, render=22.0)


def test_the_redis_path_needs_only_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: one queue primitive (Redis streams); no queue library is imported, none of its keys read."""
    monkeypatch.setitem(sys.modules, "arq", None)  # any import of it now fails
    backend = backend_from_config(
        BotConfig(), environ={"OMOST_REDIS_URL": "redis://localhost:6379/0"}, path=tmp_path / "none.toml"
    )
    assert isinstance(backend, RedisJobBackend)
    sources = "".join(
        path.read_text() for path in Path(__file__).resolve().parents[3].glob("bot/distributed/*.py")
    )
    assert "arq:" not in sources and "import arq" not in sources


@pytest.mark.parametrize(
    ("change", "parameter"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"heartbeat_s": 2.0, "lease_s": 3.0}, "lease_s"),
        ({"redis_url": "localhost:6379"}, "redis_url"),
    ],
)
def test_bad_worker_settings(change: dict, parameter: str) -> None:
    with pytest.raises(OmostError) as error:
        WorkerConfig(**{"redis_url": "redis://localhost:6379/0", **change}).validated()
    assert error.value.parameter == parameter
