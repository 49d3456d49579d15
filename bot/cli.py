"""``omost-bot``: the console entry point (engine commands plus ``run`` for the bot)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that each add subcommands through ``register(subparsers)``.
COMMAND_MODULES = (
    "omost_engine.cli.canvas",  # canvas, layout
    "omost_engine.cli.compose",  # compose
    "omost_engine.cli.render",  # render
    "bot.commands",  # run
    "bot.distributed.cli",  # worker, workers (GPU workers through Redis)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omost-bot", description="Omost image composition: bot and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
