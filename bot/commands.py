"""``omost-bot run``: start the Discord bot with the real engine."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import BotConfig, load_config
from omost_engine.errors import OmostError

if TYPE_CHECKING:
    from bot.bot import OmostBot
    from omost_engine.clip_tokens import ClipTokenCounter


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="start the Discord bot",
        description="Start the Discord bot. Settings come from environment variables "
        "(DISCORD_TOKEN, OMOST_LLM, OMOST_SDXL, OMOST_DEVICE, OMOST_MEMORY, "
        "OMOST_DB, ...) and an optional TOML file; see docs/bot.md.",
    )
    run.add_argument("--config", type=Path, help="TOML file (default: $OMOST_CONFIG or ./omost-bot.toml)")
    run.add_argument("--db", type=Path, help="SQLite file (overrides OMOST_DB)")
    run.add_argument("--check", action="store_true", help="check the configuration and database, then exit")
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = {"db": args.db} if args.db else {}
        config = load_config(path=args.config, **overrides)
        if not config.token:  # --check too: "config ok" must mean `run` would start
            raise OmostError(
                "no Discord bot token: set DISCORD_TOKEN or `token` in the config file",
                parameter="DISCORD_TOKEN",
            )
        if args.check:
            return check(config, config_path=args.config)
        return start(config, config_path=args.config)
    except OmostError as exc:
        print(f"omost-bot: {exc}", file=sys.stderr)
        return 2


def check(config: BotConfig, *, config_path: Path | None = None) -> int:
    """Report the configuration, the Redis settings and the database; no Discord, no models, and nothing
    created or changed on disk (the database is read as immutable, never created or migrated, while checking:
    a WAL database opened normally would leave -wal/-shm files behind)."""
    import sqlite3

    from bot.config import RedisConfig
    from bot.db import find_migrations

    redis = RedisConfig.load(path=config_path)
    newest = max((m.version for m in find_migrations()), default=0)
    if not config.db.exists():
        db_text = f"db={config.db} (does not exist yet; created with schema v{newest} at the first start)"
    else:
        try:
            with contextlib.closing(
                sqlite3.connect(f"{config.db.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
            ) as connection:
                tables = {
                    row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                version = 0
                if "schema_version" in tables:
                    version = int(
                        connection.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
                    )
        except sqlite3.DatabaseError as exc:
            raise OmostError(
                f"OMOST_DB {str(config.db)!r} is not a SQLite database the bot can open ({exc}); "
                "allowed: an omost-bot database file, or a path where one will be created",
                parameter="db",
                value=str(config.db),
            ) from None
        if version > newest:
            raise OmostError(
                f"the database {str(config.db)!r} has schema version {version}, newer than this bot "
                f"knows (up to {newest})",
                parameter="db",
                value=version,
            )
        pending = f", migrated to v{newest} at start" if version < newest else ""
        db_text = f"db={config.db} (schema v{version}{pending})"
    print(
        f"config ok: llm={config.llm_endpoint or config.llm or 'default'} sdxl={config.sdxl or 'default'} "
        f"device={config.device} memory={config.memory} queue={'redis' if redis else 'in-process'} "
        f"{db_text}"
    )
    return 0


def build_bot(
    config: BotConfig, *, config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> OmostBot:
    """The bot for ``omost-bot run``: on Redis (``OMOST_REDIS_URL`` or ``[redis] url``) the GPU workers own
    the models, so no engine is built here; otherwise the in-process queue runs the real engine."""
    from bot.bot import OmostBot
    from bot.distributed.backend import backend_from_config

    backend = backend_from_config(config, environ=environ, path=config_path)
    if backend is not None:
        return OmostBot(config=config, backend=backend, clip_tokens=clip_tokens_for(config))
    from bot.engine_factory import create_engine

    return OmostBot(config=config, engine=create_engine(config), clip_tokens=clip_tokens_for(config))


def clip_tokens_for(config: BotConfig) -> ClipTokenCounter | None:
    """The CLIP tokenizer the region editor counts with: the SDXL model's own (a hub id or diffusers folder),
    or for a single checkpoint file its config folder's (``sdxl_config``). None for a single file without
    one (the shipped SDXL configs carry no vocabulary): the editor then leaves sub-prompt lengths unchecked.
    Nothing loads here; the tokenizer loads at the first text edit."""
    from omost_engine.clip_tokens import ClipTokenCounter
    from omost_engine.render.loading import DEFAULT_MODEL, SINGLE_FILE_SUFFIXES

    model = config.sdxl or DEFAULT_MODEL
    if model.lower().endswith(SINGLE_FILE_SUFFIXES):
        return ClipTokenCounter(config.sdxl_config) if config.sdxl_config else None
    return ClipTokenCounter(model)


def start(config: BotConfig, *, config_path: Path | None = None) -> int:
    assert config.token is not None
    bot = build_bot(config, config_path=config_path)
    bot.run(config.token, log_handler=None)
    return 0
