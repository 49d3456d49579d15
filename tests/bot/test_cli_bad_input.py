"""Bad command-line input is one line on stderr and exit 2, for the commands that raised tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bot.cli import main
from omost_engine.conditions import Condition
from omost_engine.layout import Layout

MISSING_DEVICES = ["tpu9", "cuda:99", "meta", "", *([] if torch.cuda.is_available() else ["cuda"])]


def one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


@pytest.fixture
def layout_file(tmp_path: Path) -> Path:
    path = tmp_path / "layout.json"
    path.write_text(
        Layout(
            conditions=[
                Condition(rect=(0, 90, 0, 90), prefixes=("A room.",), suffixes=(), color=(200, 180, 160))
            ]
        ).dumps()
    )
    return path


@pytest.mark.parametrize("device", MISSING_DEVICES)
def test_render_on_a_device_this_machine_lacks(
    device: str, layout_file: Path, tmp_path: Path, capsys
) -> None:
    err = one_line_exit_2(
        capsys, ["render", str(layout_file), "--out", str(tmp_path / "o"), "--device", device]
    )
    assert err.startswith(f"omost-bot render: --device {device!r} is not")
    assert "allowed: cpu" in err
    assert not (tmp_path / "o").exists()  # refused before anything is made


@pytest.mark.parametrize("device", ["tpu9", "cuda:99"])
def test_compose_refuses_the_device_before_the_llm_runs(device: str, tmp_path: Path, capsys) -> None:
    # The endpoint is never called: nothing listens there, and the error is the device's.
    err = one_line_exit_2(
        capsys,
        [
            "compose",
            "a cat",
            "--out",
            str(tmp_path / "o"),
            "--llm-endpoint",
            "http://127.0.0.1:9/v1",
            "--device",
            device,
            "--quiet",
        ],
    )
    assert err.startswith(f"omost-bot compose: --device {device!r} is not")


def test_an_available_device_is_accepted() -> None:
    from omost_engine.cli.render import available_devices, check_device

    assert check_device(None) is None
    assert check_device("cpu") == "cpu"
    assert "cpu" in available_devices()


def test_run_check_on_a_file_that_is_not_sqlite(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "x")  # only the database is wrong
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("these are my notes, not a database\n" * 10)
    err = one_line_exit_2(capsys, ["run", "--check", "--db", str(not_sqlite)])
    assert "SQLite database" in err and "not a" in err and str(not_sqlite) in err
    assert not_sqlite.read_text() == "these are my notes, not a database\n" * 10


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://x", "must start with redis://, rediss:// or unix://"),
        ("redis://x:notaport/0", "has port 'notaport', not a number from 1 to 65535"),
        ("redis://x:70000/0", "has port '70000', not a number from 1 to 65535"),
        ("redis://x:6379/zero", "names database 'zero', not a number"),
        ("unix://", "names no socket path"),
    ],
)
@pytest.mark.parametrize("command", ["workers", "worker"])
def test_a_malformed_redis_url(command: str, url: str, problem: str, capsys) -> None:
    argv = [command, "--redis-url", url] + (["--engine", "scripted"] if command == "worker" else [])
    err = one_line_exit_2(capsys, argv)
    assert err.startswith(f"omost-bot {command}: error: the Redis URL {url!r} {problem}; allowed: redis://")


def test_workers_exits_2_when_redis_cannot_be_reached(capsys) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = one_line_exit_2(capsys, ["workers", "--redis-url", f"redis://127.0.0.1:{port}/0"])
    assert err.startswith(f"omost-bot workers: error: cannot reach Redis at redis://127.0.0.1:{port}/0")


def test_workers_without_a_url_exits_2(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMOST_REDIS_URL", raising=False)
    err = one_line_exit_2(capsys, ["workers", "--redis-url", ""])
    assert "a Redis URL is needed" in err


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@h:6380/2",
        "redis://h?db=3",
        "unix:///run/redis.sock",
        "redis://",
    ],
)
def test_well_formed_redis_urls_pass(url: str) -> None:
    from bot.config import check_redis_url, redis_url_problem

    assert redis_url_problem(url) is None and check_redis_url(url) == url
