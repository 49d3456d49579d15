"""The bot's configuration: defaults, then an optional TOML file, then environment variables.

Every field has an environment variable (``OMOST_<FIELD>``, upper case; the token is
``DISCORD_TOKEN``) and a TOML key of the same name as the field. A bad value is one ``OmostError``
naming the variable or key, the value and what is allowed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from omost_engine.errors import OmostError

DEFAULT_CONFIG_FILE = "omost-bot.toml"

MemoryMode = Literal["offload", "resident"]


@dataclass(frozen=True, kw_only=True)
class BotConfig:
    token: str | None = None
    llm: str | None = None  # None: the engine's default LLM
    llm_endpoint: str | None = None  # an OpenAI-compatible server instead of a local LLM
    sdxl: str | None = None  # None: the engine's default SDXL checkpoint
    # For a single-file .safetensors checkpoint: the diffusers SDXL folder or hub id with its configs and
    # tokenizers (None: stabilityai/stable-diffusion-xl-base-1.0).
    sdxl_config: str | None = None
    device: str = "auto"  # auto: cuda, else mps, else cpu (omost_engine.memory.default_device)
    memory: MemoryMode = "offload"
    db: Path = Path("omost-bot.sqlite3")
    owner_ids: tuple[int, ...] = ()  # may run /omost sync; empty: the application's owner
    sync_guild: int | None = None  # sync commands to one guild (instant, for development) instead of globally
    max_queue: int = 50  # jobs waiting across all users
    max_queued_per_user: int = 3
    rate_limit: int = 10  # jobs a user may submit ...
    rate_window_s: float = 600.0  # ... per this many seconds
    llm_timeout_s: float = 900.0
    render_timeout_s: float = 900.0
    max_prompt_chars: int = 2000
    max_layout_bytes: int = 512 * 1024
    status_interval_s: float = 1.5  # at least this long between two edits of a status message
    status_edits_per_s: float = 5.0  # progress edits of status messages, all jobs together (results never wait)
    download_timeout_s: float = 10.0  # reading a layout file from Discord's CDN


# Per field: how to parse a string from the environment, and the allowed range where numeric.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "max_queue": (1, 10_000),
    "max_queued_per_user": (1, 1000),
    "rate_limit": (1, 10_000),
    "max_prompt_chars": (1, 6000),
    "max_layout_bytes": (1024, 25 * 1024 * 1024),
}
_FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "rate_window_s": (1.0, 86_400.0),
    "llm_timeout_s": (1.0, 86_400.0),
    "render_timeout_s": (1.0, 86_400.0),
    "status_interval_s": (0.0, 60.0),
    "status_edits_per_s": (0.1, 50.0),
    "download_timeout_s": (0.1, 120.0),
}
_CHOICES: dict[str, tuple[str, ...]] = {"memory": ("offload", "resident")}
_OPTIONAL_TEXT = ("token", "llm", "llm_endpoint", "sdxl", "sdxl_config")


def env_name(field: str) -> str:
    return "DISCORD_TOKEN" if field == "token" else f"OMOST_{field.upper()}"


def _bad(source: str, value: Any, allowed: str) -> OmostError:
    return OmostError(
        f"{source} must be {allowed}, not {value!r}", parameter=source, value=value, allowed=allowed
    )


def _parse(field: str, value: Any, source: str) -> Any:
    """Convert one raw value (a string from the environment, or a TOML value) to the field's type."""
    text = value.strip() if isinstance(value, str) else value
    if field in _OPTIONAL_TEXT:
        if not isinstance(text, str):
            raise _bad(source, value, "text")
        return text or None
    if field == "device":
        if not isinstance(text, str) or not text:
            raise _bad(source, value, "auto or a torch device such as cuda, cuda:1, mps or cpu")
        return text
    if field in _CHOICES:
        if text not in _CHOICES[field]:
            raise _bad(source, value, " or ".join(_CHOICES[field]))
        return text
    if field == "db":
        if not isinstance(text, str) or not text:
            raise _bad(source, value, "a file path")
        return Path(text)
    if field == "owner_ids":
        items = text.replace(",", " ").split() if isinstance(text, str) else text
        if not isinstance(items, list | tuple) or not all(str(i).isdigit() for i in items):
            raise _bad(source, value, "Discord user ids separated by commas")
        return tuple(int(i) for i in items)
    if field == "sync_guild":
        if text in (None, ""):
            return None
        if not str(text).isdigit():
            raise _bad(source, value, "a Discord guild id")
        return int(text)
    if field in _INT_RANGES:
        low, high = _INT_RANGES[field]
        try:
            number = int(text) if not isinstance(text, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= high:
            raise _bad(source, value, f"a whole number from {low} to {high}")
        return number
    if field in _FLOAT_RANGES:
        low, high = _FLOAT_RANGES[field]
        try:
            number = float(text) if not isinstance(text, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= high:
            raise _bad(source, value, f"a number from {low:g} to {high:g}")
        return number
    raise AssertionError(f"no parser for config field {field}")  # a new field without a table entry


def load_config(
    *, environ: Mapping[str, str] | None = None, path: str | Path | None = None, **overrides: Any
) -> BotConfig:
    """Defaults <- TOML file (``path``, ``$OMOST_CONFIG`` or ./omost-bot.toml if present) <- environment
    <- ``overrides`` (already typed, e.g. from command-line flags)."""
    environ = os.environ if environ is None else environ
    names = [f.name for f in fields(BotConfig)]
    values: dict[str, Any] = {}
    config_path = (
        Path(path) if path else Path(environ["OMOST_CONFIG"]) if environ.get("OMOST_CONFIG") else None
    )
    if config_path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        config_path = Path(DEFAULT_CONFIG_FILE)
    if config_path is not None:
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise OmostError(
                f"cannot read the config file {str(config_path)!r}: {exc.strerror}",
                parameter="config",
                value=str(config_path),
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise OmostError(
                f"the config file {str(config_path)!r} is not valid TOML: {exc}",
                parameter="config",
                value=str(config_path),
            ) from exc
        section = data.get("bot", data)  # keys at the top level or under [bot]
        unknown = sorted(set(section) - set(names))
        if unknown:
            raise OmostError(
                f"unknown key {unknown[0]!r} in {str(config_path)!r}",
                parameter=unknown[0],
                value=unknown[0],
                allowed=names,
            )
        for key, raw in section.items():
            values[key] = _parse(key, raw, f"{key} in {config_path.name}")
    for name in names:
        raw = environ.get(env_name(name))
        if raw is not None:
            values[name] = _parse(name, raw, env_name(name))
    config = replace(BotConfig(), **values)
    return replace(config, **overrides) if overrides else config
