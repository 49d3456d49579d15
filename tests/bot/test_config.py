"""Configuration: defaults, TOML file, environment variables, and one clear error for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import BotConfig, load_config
from omost_engine.errors import OmostError


def test_defaults_without_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={}) == BotConfig()


def test_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(
        environ={
            "DISCORD_TOKEN": "abc",
            "OMOST_LLM": "lllyasviel/omost-phi-3-mini-128k-8bits",
            "OMOST_LLM_ENDPOINT": "http://127.0.0.1:8000/v1",
            "OMOST_SDXL": "/models/sdxl.safetensors",
            "OMOST_DEVICE": "cuda:1",
            "OMOST_MEMORY": "resident",
            "OMOST_DB": "/data/bot.sqlite3",
            "OMOST_OWNER_IDS": "1, 2",
            "OMOST_MAX_QUEUED_PER_USER": "5",
            "OMOST_RATE_WINDOW_S": "30",
        }
    )
    assert config.token == "abc" and config.llm == "lllyasviel/omost-phi-3-mini-128k-8bits"
    assert config.llm_endpoint == "http://127.0.0.1:8000/v1" and config.sdxl == "/models/sdxl.safetensors"
    assert (
        config.device == "cuda:1" and config.memory == "resident" and config.db == Path("/data/bot.sqlite3")
    )
    assert config.owner_ids == (1, 2) and config.max_queued_per_user == 5 and config.rate_window_s == 30.0


def test_toml_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "omost-bot.toml"
    path.write_text('[bot]\ntoken = "from-file"\nmemory = "resident"\nmax_queue = 7\nowner_ids = [5]\n')
    config = load_config(environ={"OMOST_MAX_QUEUE": "9"}, path=path, db=tmp_path / "x.sqlite3")
    assert config.token == "from-file" and config.memory == "resident" and config.owner_ids == (5,)
    assert config.max_queue == 9 and config.db == tmp_path / "x.sqlite3"
    assert load_config(environ={"OMOST_CONFIG": str(path)}).token == "from-file"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OMOST_MEMORY": "swap"}, "OMOST_MEMORY must be offload or resident, not 'swap'"),
        ({"OMOST_MAX_QUEUE": "0"}, "OMOST_MAX_QUEUE must be a whole number from 1 to 10000"),
        ({"OMOST_MAX_QUEUE": "many"}, "OMOST_MAX_QUEUE must be a whole number"),
        ({"OMOST_RATE_WINDOW_S": "-1"}, "OMOST_RATE_WINDOW_S must be a number from 1 to 86400"),
        ({"OMOST_OWNER_IDS": "me"}, "Discord user ids"),
        ({"OMOST_DEVICE": " "}, "torch device"),
        ({"OMOST_SYNC_GUILD": "abc"}, "guild id"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OmostError) as error:
        load_config(environ=environ)
    assert expected in str(error.value)
    assert error.value.parameter == next(iter(environ))


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("token = ")
    with pytest.raises(OmostError, match="not valid TOML"):
        load_config(environ={}, path=broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[bot]\ntokn = "x"\n')
    with pytest.raises(OmostError, match="unknown key 'tokn'"):
        load_config(environ={}, path=unknown)
    with pytest.raises(OmostError, match="cannot read the config file"):
        load_config(environ={}, path=tmp_path / "missing.toml")
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text("[bot]\nmax_queue = true\n")
    with pytest.raises(OmostError, match="max_queue in type.toml must be a whole number"):
        load_config(environ={}, path=wrong_type)


def test_max_attempts_of_a_job_after_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert BotConfig().max_attempts == 2
    assert load_config(environ={"OMOST_MAX_ATTEMPTS": "3"}).max_attempts == 3
    with pytest.raises(OmostError, match="OMOST_MAX_ATTEMPTS must be a whole number from 1 to 100"):
        load_config(environ={"OMOST_MAX_ATTEMPTS": "0"})


def test_the_one_documented_file_shape_is_accepted_exactly(tmp_path: Path) -> None:
    """[bot] and [redis] tables (docs/bot.md); keys at the top level or unknown [redis] keys are refused
    in one line saying where they belong (issue 10, item 16)."""
    path = tmp_path / "omost-bot.toml"
    path.write_text('[bot]\ntoken = "t"\nmax_queue = 4\n\n[redis]\nurl = "redis://127.0.0.1:6379/0"\n')
    config = load_config(environ={}, path=path)
    assert config.token == "t" and config.max_queue == 4
    cases = {
        'token = "t"\n\n[redis]\nurl = "redis://x:6379/0"\n': "'token' is at the top level of omost-bot.toml; "
        "it belongs under [bot]",
        '[bot]\ntoken = "t"\n[redis]\nurl = "redis://x:6379/0"\nspeed = 3\n': "unknown key 'speed' in [redis]",
        '[bot]\ntoken = "t"\n[worker]\nname = "x"\n': "unknown key 'worker' at the top level",
        "redis = 5\n": "'redis' is at the top level of omost-bot.toml; it belongs under a [redis] table",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(OmostError) as error:
            load_config(environ={}, path=path)
        assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"OMOST_DEVICE": "gpu9"},
            "OMOST_DEVICE must be auto or a torch device such as cuda, cuda:1, mps or cpu",
        ),
        (
            {"OMOST_MAX_LAYOUT_BYTES": "1" + "0" * 5000},
            "OMOST_MAX_LAYOUT_BYTES must be a whole number from 1024",
        ),
    ],
)
def test_device_and_huge_numbers_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OmostError) as error:
        load_config(environ=environ)
    assert expected in str(error.value) and len(str(error.value)) < 300
