"""``omost-bot run``: start the Discord bot with the real engine."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bot.config import BotConfig, load_config
from omost_engine.errors import OmostError

if TYPE_CHECKING:
    from bot.bot import OmostBot


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
        if not config.token and not args.check:
            raise OmostError(
                "no Discord bot token: set DISCORD_TOKEN or `token` in the config file",
                parameter="DISCORD_TOKEN",
            )
        if args.check:
            return check(config)
        return start(config, config_path=args.config)
    except OmostError as exc:
        print(f"omost-bot: {exc}", file=sys.stderr)
        return 2


def check(config: BotConfig) -> int:
    """Open (and migrate) the database and report the configuration; no Discord, no models."""
    import asyncio

    from bot.db import Database

    async def open_db() -> int:
        db = await Database.open(config.db)
        version = await db.version()
        await db.close()
        return version

    version = asyncio.run(open_db())
    print(
        f"config ok: llm={config.llm_endpoint or config.llm or 'default'} sdxl={config.sdxl or 'default'} "
        f"device={config.device} memory={config.memory} db={config.db} (schema v{version})"
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
        return OmostBot(config=config, backend=backend)
    from bot.engine_factory import create_engine

    return OmostBot(config=config, engine=create_engine(config))


def start(config: BotConfig, *, config_path: Path | None = None) -> int:
    assert config.token is not None
    bot = build_bot(config, config_path=config_path)
    bot.run(config.token, log_handler=None)
    return 0
