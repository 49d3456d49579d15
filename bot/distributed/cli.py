"""``omost-bot worker`` (a GPU worker process) and ``omost-bot workers`` (health of the Redis setup)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from bot.distributed import worker


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "worker",
        help="run a GPU worker that takes jobs from Redis",
        description="Run a GPU worker: load the engine once, then take jobs from the "
        "shared Redis queue and report progress back. See docs/scaling.md.",
    )
    worker.add_arguments(run)
    run.set_defaults(func=worker.handle)
    show = subparsers.add_parser(
        "workers",
        help="show the workers and queues seen in Redis",
        description="Print the workers seen (alive or gone), their models, their jobs and the queue lengths.",
    )
    show.add_argument(
        "--redis-url",
        default=os.environ.get("OMOST_REDIS_URL"),
        help="Redis server (default: $OMOST_REDIS_URL)",
    )
    show.add_argument(
        "--prefix",
        default=os.environ.get("OMOST_REDIS_PREFIX", "omost"),
        help="Redis key prefix (default: %(default)s)",
    )
    show.set_defaults(func=show_workers)


def show_workers(args: argparse.Namespace) -> int:
    """Exit 2 with one line on stderr for a missing, malformed or unreachable Redis, like every command."""
    from bot.config import check_redis_url
    from omost_engine.errors import OmostError

    if not args.redis_url:
        print(
            "omost-bot workers: error: a Redis URL is needed (--redis-url or $OMOST_REDIS_URL)",
            file=sys.stderr,
        )
        return 2
    try:
        check_redis_url(args.redis_url)
    except OmostError as exc:
        print(f"omost-bot workers: error: {exc}", file=sys.stderr)
        return 2
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from bot.distributed.health import read_health
    from bot.distributed.protocol import Keys

    async def read() -> list[str]:
        redis = Redis.from_url(args.redis_url)
        try:
            return (await read_health(redis, Keys(args.prefix))).lines()
        finally:
            await redis.aclose()

    try:
        lines = asyncio.run(read())
    except (OSError, RedisError, ValueError) as exc:  # ValueError: a URL redis-py cannot read
        print(
            f"omost-bot workers: error: cannot reach Redis at {args.redis_url}: {' '.join(str(exc).split())}",
            file=sys.stderr,
        )
        return 2
    print("\n".join(lines))
    return 0
