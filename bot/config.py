"""The bot's configuration, and the Redis settings beside it: defaults, then the TOML file, then the environment.

Each field is declared once below (type, range, default, help). Every field has an environment
variable (``OMOST_<FIELD>``, upper case; the token is ``DISCORD_TOKEN``; Redis fields are
``OMOST_REDIS_<FIELD>``). The TOML file has exactly one shape: the bot's keys in a ``[bot]`` table and
the Redis ones in a ``[redis]`` table; anything else is refused with one line saying where it belongs.
A bad value is one ``OmostError`` naming the variable or key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from omost_engine.declared import check_value, field_kind, fields_of
from omost_engine.errors import OmostError
from omost_engine.layout import DEFAULT_MAX_LAYOUT_BYTES, LayoutBytes
from omost_engine.variations import DEFAULT_UPSCALE, UPSCALE_MAX, UPSCALE_MIN

DEFAULT_CONFIG_FILE = "omost-bot.toml"
TABLES = ("bot", "redis")  # the config file's one shape: [bot] and [redis]

MemoryMode = Literal["offload", "resident"]
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d{1,2})?|xpu(:\d{1,2})?)$"

# Ranges shared with the per-server settings (bot.settings), written once here.
QueuedPerUser = Annotated[int, Field(ge=1, le=1000)]
RateLimit = Annotated[int, Field(ge=1, le=10_000)]
Seconds = Annotated[float, Field(ge=1.0, le=86_400.0)]
Attempts = Annotated[int, Field(ge=1, le=100)]  # runs of one job (Redis settings and job messages)
# The Upscale button's factor: above the high-res pass's threshold, at most RenderParams' hr_scale limit.
UpscaleScale = Annotated[float, Field(gt=UPSCALE_MIN, le=UPSCALE_MAX)]
UPSCALE_ALLOWED = f"a number above {UPSCALE_MIN:g} and at most {UPSCALE_MAX:g}"
OptionalText = Annotated[str, Field(min_length=1, max_length=4096)] | None

_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class BotConfig:
    token: OptionalText = Field(None, description="the Discord bot token (required for run)")
    llm: OptionalText = Field(None, description="default LLM: a known name, a hub id, a local folder")
    llm_endpoint: OptionalText = Field(
        None, description="an OpenAI-compatible server (http://host:port/v1) used instead of a local LLM"
    )
    sdxl: OptionalText = Field(None, description="SDXL checkpoint: hub id, diffusers folder or .safetensors")
    sdxl_config: OptionalText = Field(
        None,
        description="for a single .safetensors checkpoint: the diffusers SDXL folder or hub id with its "
        "configs and tokenizers (default: SDXL base 1.0's, shipped with omost-bot)",
    )
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = Field(
        "auto",
        description="torch device; auto picks cuda, else mps, else cpu",
        json_schema_extra={"allowed": "auto or a torch device such as cuda, cuda:1, mps or cpu"},
    )
    memory: MemoryMode = Field(
        "offload", description="offload: only the running stage's models on the GPU; resident: all of them"
    )
    db: Path = Field(
        Path("omost-bot.sqlite3"),
        description="the SQLite file (created and migrated at start)",
        json_schema_extra={"allowed": "a file path"},
    )
    owner_ids: tuple[int, ...] = Field(
        (),
        description="user ids allowed to /omost sync, pause, resume (empty: the application's owner)",
        json_schema_extra={"allowed": "Discord user ids separated by commas"},
    )
    sync_guild: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="register commands in this server only (instant, for development)",
        json_schema_extra={"allowed": "a Discord guild id"},
    )
    max_queue: Annotated[int, Field(ge=1, le=10_000)] = Field(50, description="jobs waiting across all users")
    max_queued_per_user: QueuedPerUser = Field(3, description="queued or running jobs per user")
    rate_limit: RateLimit = Field(10, description="jobs a user may submit per rate window")
    rate_window_s: Seconds = Field(600.0, description="the rate window in seconds")
    llm_timeout_s: Seconds = Field(900.0, description="an LLM stage running longer is stopped and reported")
    render_timeout_s: Seconds = Field(900.0, description="a render running longer is stopped and reported")
    max_prompt_chars: Annotated[int, Field(ge=1, le=6000)] = Field(2000, description="longest prompt")
    max_layout_bytes: LayoutBytes = Field(
        DEFAULT_MAX_LAYOUT_BYTES,
        description="largest layout file accepted (the one limit: bot, CLI and loader)",
    )
    status_interval_s: Annotated[float, Field(ge=0.0, le=60.0)] = Field(
        1.5, description="least time between two edits of a status message"
    )
    max_attempts: Attempts = Field(
        2, description="runs of a job the bot was running when it died (1: never resume, report it failed)"
    )
    status_edits_per_s: Annotated[float, Field(ge=0.1, le=50.0)] = Field(
        5.0,
        description="progress edits of status messages per second, all jobs together (results never wait)",
    )
    download_timeout_s: Annotated[float, Field(ge=0.1, le=120.0)] = Field(
        10.0, description="longest wait for a layout file from Discord's CDN"
    )
    image_store_hours: Annotated[float, Field(ge=0.0, le=8760.0)] = Field(
        24.0,
        description="results' images are kept this long for picks and upscales without rendering again "
        "(0: not kept)",
    )
    image_store_mb: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        512, description="the kept images take at most this many MB in the database; the oldest go first"
    )
    upscale_scale: UpscaleScale = Field(
        DEFAULT_UPSCALE,
        description="the Upscale button's factor (a server or channel setting can change it)",
        json_schema_extra={"allowed": UPSCALE_ALLOWED},
    )


REDIS_URL_FORMS = "redis://[:password@]host[:port][/db], rediss://... (TLS) or unix:///path/to/socket"


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a Redis URL as redis-py reads it, in a few words; None when nothing is."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss:// or unix://"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  # the property raises for a port that is not a number in 0..65535
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
        return f"has port {port!r}, not a number from 1 to 65535"
    if parts.port == 0:
        return "has port 0, not a number from 1 to 65535"
    db = (parse_qs(parts.query).get("db") or [""])[0] or (
        parts.path.lstrip("/") if parts.scheme != "unix" else ""
    )
    if db and not db.isdigit():
        return f"names database {db!r}, not a number"
    if parts.scheme == "unix" and not parts.path:
        return "names no socket path"
    return None


def check_redis_url(url: str, *, parameter: str = "redis_url") -> str:
    """``url`` when redis-py can connect with it; else one OmostError saying what is wrong."""
    problem = redis_url_problem(url)
    if problem is not None:
        raise OmostError(
            f"the Redis URL {url!r} {problem}; allowed: {REDIS_URL_FORMS}",
            parameter=parameter,
            value=url,
            allowed=REDIS_URL_FORMS,
        )
    return url


RedisUrl = Annotated[str, Field(min_length=1, max_length=2048)]


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class RedisConfig:
    """Where the shared Redis is and how the bot uses it. No URL means no Redis: the in-process queue."""

    url: RedisUrl = Field(description="the Redis server", json_schema_extra={"allowed": REDIS_URL_FORMS})
    prefix: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        "omost", description="key prefix, so several bots can share one Redis"
    )
    queue: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        "default", description="the queue this bot's jobs go to; its workers serve it"
    )
    consumer: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        "bot", description="this bot's name in the event stream's consumer group"
    )
    watchdog_s: Annotated[float, Field(ge=0.05, le=86_400)] = Field(
        1.0, description="how often lost and orphaned jobs are looked for"
    )
    no_worker_timeout_s: Annotated[float, Field(ge=0.05, le=86_400)] = Field(
        300.0, description="a job waits this long for a worker to come online, then fails"
    )
    max_attempts: Attempts = Field(3, description="runs of one job when its workers keep dying")

    def __post_init__(self) -> None:
        check_redis_url(self.url, parameter="url")

    @classmethod
    def load(
        cls, *, environ: Mapping[str, str] | None = None, path: str | Path | None = None
    ) -> RedisConfig | None:
        """``[redis]`` of the config file, then ``OMOST_REDIS_<FIELD>``; None when no URL is configured."""
        environ = os.environ if environ is None else environ
        file = config_file(environ, path)
        # A missing file is load_config's to report; the bot checks its config first.
        tables = read_config_file(file if file is not None and file.is_file() else None)
        values = _values(
            cls,
            tables.get("redis", {}),
            environ,
            env_name=redis_env_name,
            file_label="[redis] of the config file",
        )
        if not values.get("url"):
            return None
        return _build(cls, values, name_source=False)


def env_name(field: str) -> str:
    return "DISCORD_TOKEN" if field == "token" else f"OMOST_{field.upper()}"


def redis_env_name(field: str) -> str:
    return f"OMOST_REDIS_{field.upper()}"


def config_file(environ: Mapping[str, str], path: str | Path | None) -> Path | None:
    """The TOML file: ``path``, else ``$OMOST_CONFIG``, else ./omost-bot.toml when it exists."""
    if path:
        return Path(path)
    if environ.get("OMOST_CONFIG"):
        return Path(environ["OMOST_CONFIG"])
    return Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None


def read_config_file(path: Path | None) -> dict[str, dict[str, Any]]:
    """The file's tables, checked against the one shape (``[bot]`` and ``[redis]``, nothing at the top)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise OmostError(
            f"cannot read the config file {str(path)!r}: {reason}", parameter="config", value=str(path)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise OmostError(
            f"the config file {str(path)!r} is not valid TOML: {exc}", parameter="config", value=str(path)
        ) from None
    for key, value in data.items():
        if key in TABLES and isinstance(value, dict):
            continue
        if key in fields_of(BotConfig) or key in TABLES:
            where = "[bot]" if key in fields_of(BotConfig) else f"a [{key}] table"
            raise OmostError(
                f"{key!r} is at the top level of {path.name}; it belongs under {where} "
                "(the file has a [bot] table and an optional [redis] table)",
                parameter=key,
                value=key,
                allowed="[bot], [redis]",
            )
        raise OmostError(
            f"unknown key {key!r} at the top level of {path.name}; allowed: a [bot] table and "
            "a [redis] table",
            parameter=key,
            value=key,
            allowed="[bot], [redis]",
        )
    return {name: dict(data.get(name, {})) for name in TABLES}


def _from_text(cls: type[Any], name: str, raw: str) -> Any:
    """An environment variable's text as the field's type (the validation proper comes after)."""
    text = raw.strip()
    kind = field_kind(cls, name)
    if name == "owner_ids":
        items = text.replace(",", " ").split()
        return tuple(int(i) for i in items) if all(i.isdigit() and len(i) < 25 for i in items) else text
    if name == "db":
        return Path(text) if text else text
    if kind == "int" or name == "sync_guild":
        if not text and name == "sync_guild":
            return None
        return int(text) if re.fullmatch(r"-?\d{1,25}", text) else text
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "text" or name in ("token", "llm", "llm_endpoint", "sdxl", "sdxl_config"):
        return text or None
    return text


def _from_toml(cls: type[Any], name: str, raw: Any) -> Any:
    if name == "owner_ids" and isinstance(raw, list):
        return tuple(raw)
    if name == "db" and isinstance(raw, str) and raw:
        return Path(raw)
    if field_kind(cls, name) == "float" and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str) and name in ("token", "llm", "llm_endpoint", "sdxl", "sdxl_config"):
        return raw.strip() or None
    return raw


def _values(
    cls: type[Any], table: Mapping[str, Any], environ: Mapping[str, str], *, env_name: Any, file_label: str
) -> dict[str, tuple[Any, str]]:
    """(value, where it came from) per field: the file's table, then the environment."""
    names = fields_of(cls)
    values: dict[str, tuple[Any, str]] = {}
    for key, raw in table.items():
        if key not in names:
            raise OmostError(
                f"unknown key {key!r} in {file_label}; allowed: {', '.join(names)}",
                parameter=key,
                value=key,
                allowed=list(names),
            )
        values[key] = (_from_toml(cls, key, raw), f"{key} in {file_label}")
    for name in names:
        raw = environ.get(env_name(name))
        if raw is not None and (raw.strip() or cls is BotConfig):
            values[name] = (_from_text(cls, name, raw), env_name(name))
    return values


ConfigT = TypeVar("ConfigT")


def _build(cls: type[ConfigT], values: Mapping[str, tuple[Any, str]], *, name_source: bool) -> ConfigT:
    """The config from checked values; errors name the variable or key (``parameter``: it, or the field)."""
    checked: dict[str, Any] = {}
    for name, (value, source) in values.items():
        try:
            checked[name] = check_value(cls, name, value, label=source, say_kind=True)
        except OmostError as exc:
            raise OmostError(
                exc.message, parameter=source if name_source else name, value=exc.value, allowed=exc.allowed
            ) from None
    try:
        return cls(**checked)
    except OmostError as exc:  # the Redis URL's shape
        source = values.get(exc.parameter or "", (None, exc.parameter))[1] or ""
        raise OmostError(
            f"{source}: {exc.message}",
            parameter=source if name_source else exc.parameter,
            value=exc.value,
            allowed=exc.allowed,
        ) from None


def load_config(
    *, environ: Mapping[str, str] | None = None, path: str | Path | None = None, **overrides: Any
) -> BotConfig:
    """Defaults <- TOML file (``path``, ``$OMOST_CONFIG`` or ./omost-bot.toml if present) <- environment
    <- ``overrides`` (already typed, e.g. from command-line flags). The file's ``[redis]`` table is
    checked here too, so a mistake there is reported before anything starts."""
    environ = os.environ if environ is None else environ
    file = config_file(environ, path)
    tables = read_config_file(file)
    label = f"{file.name}" if file is not None else "the config file"
    values = _values(BotConfig, tables.get("bot", {}), environ, env_name=env_name, file_label=label)
    for key in tables.get("redis", {}):
        if key not in fields_of(RedisConfig):
            raise OmostError(
                f"unknown key {key!r} in [redis] of {label}; allowed: {', '.join(fields_of(RedisConfig))}",
                parameter=key,
                value=key,
                allowed=list(fields_of(RedisConfig)),
            )
    config = _build(BotConfig, values, name_source=True)
    return dataclasses.replace(config, **overrides) if overrides else config
