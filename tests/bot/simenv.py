"""The one place the bot's tests touch simcord (pinned 3.2.1): a started bot in a small virtual server.

``world`` gives a guild with a #studio channel, members alice and bob, an admin and an owner, and an
``OmostBot`` on a real SQLite file in tmp_path with a ``ScriptedEngine`` replaying the README transcript.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
import pytest
import pytest_asyncio
import simcord
from discord import app_commands
from simcord.actors import MemberActor
from simcord.builders import ChannelHandle, GuildHandle
from simcord.types import HttpLogEntry

from bot.bot import OmostBot
from bot.config import BotConfig
from bot.jobs import InProcessJobBackend
from bot.testing import FakeClock, ScriptedEngine
from omost_engine.errors import OmostError

GOLDENS = Path(__file__).resolve().parents[1] / "fixtures" / "goldens"


def golden_reply(case: str) -> str:
    return json.loads((GOLDENS / f"{case}.json").read_text(encoding="utf-8"))["bot_response"]


DRAGON = golden_reply("01_readme_dragon_battle")
DINOSAUR = golden_reply("02_readme_dinosaur_edit")


@dataclass
class World:
    env: simcord.Env
    bot: OmostBot
    engine: ScriptedEngine
    clock: FakeClock
    config: BotConfig
    guild: GuildHandle
    channel: ChannelHandle
    alice: MemberActor
    bob: MemberActor
    admin: MemberActor
    owner: MemberActor
    extra: dict[str, Any] = field(default_factory=dict)

    def make_bot(self, **config_changes: Any) -> OmostBot:
        """A fresh bot on the same database and engine (for restarts)."""
        from dataclasses import replace

        return OmostBot(config=replace(self.config, **config_changes), engine=self.engine, clock=self.clock)

    async def restart(self, **config_changes: Any) -> OmostBot:
        old = self.bot
        self.bot = self.make_bot(**config_changes)
        await self.env.restart_bot(self.bot)
        if old.db is not None:  # a crash leaves the old connection open; tidy up the test process
            await old.db.close()
        return self.bot


def simulate(bot: OmostBot, **options: Any) -> simcord.run:
    """``async with simulate(bot) as env``: a bot of the test's own making in the simulator."""
    return simcord.run(bot, **options)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bot_config(**fields): BotConfig fields for the simcord bot")


def make_config(tmp_path: Path, **changes: Any) -> BotConfig:
    base = dict(
        db=tmp_path / "bot.sqlite3", status_interval_s=1.5, max_queue=20, max_queued_per_user=3, rate_limit=50
    )
    base.update(changes)
    return BotConfig(**base)


@pytest_asyncio.fixture
async def sim_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[simcord.Env]:
    marker = request.node.get_closest_marker("bot_config")
    config = make_config(tmp_path, **(marker.kwargs if marker else {}))
    clock = FakeClock()
    engine = ScriptedEngine(replies=[DRAGON, DINOSAUR], clock=clock)
    bot = OmostBot(config=config, engine=engine, clock=clock)
    # settle_timeout: a settle returns as soon as the bot is idle; the margin only matters on a busy machine.
    env = simcord.Env(bot, settle_timeout=30)
    env.extra_objects = (config, clock, engine)  # type: ignore[attr-defined]
    await env.start()
    try:
        yield env
    finally:
        await env.shutdown()
        current = env.bot
        if isinstance(current, OmostBot) and current.db is not None:
            await current.db.close()
        unexpected = [e for e in env.errors_since(env._errors_acknowledged) if not is_refusal(e)]
        if unexpected:
            raise ExceptionGroup(f"bot raised {len(unexpected)} error(s) during the test", unexpected)


def is_refusal(error: BaseException) -> bool:
    """A refusal the tree's one error handler answers as one ephemeral line (an ``OmostError`` from a
    command, or a failed declared check): an answer, not a failure of the bot. simcord records every error
    that reaches the tree's ``on_error``."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    return isinstance(cause, OmostError | app_commands.CheckFailure)


@pytest_asyncio.fixture
async def world(sim_env: simcord.Env) -> World:
    config, clock, engine = sim_env.extra_objects  # type: ignore[attr-defined]
    guild = sim_env.create_guild(name="Studio")
    channel = guild.create_text_channel("studio")
    admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    alice = guild.add_member(sim_env.create_user("alice"))
    bob = guild.add_member(sim_env.create_user("bob"))
    admin = guild.add_member(sim_env.create_user("admin"), roles=[admins])
    owner = guild.add_member(sim_env.create_user("owner"))
    bot = sim_env.bot
    assert isinstance(bot, OmostBot)
    bot.config = config.__class__(**{**config.__dict__, "owner_ids": (owner.id,)})
    return World(
        env=sim_env,
        bot=bot,
        engine=engine,
        clock=clock,
        config=bot.config,
        guild=guild,
        channel=channel,
        alice=alice,
        bob=bob,
        admin=admin,
        owner=owner,
    )


def run_jobs_beside_the_simulator(world: World) -> None:
    """Resume the paused queue from the test itself, so that a job may stay running between actions.

    simcord settles each action only when every thread the bot started has returned, so a job held inside
    the engine would make every click time out. A worker task started here is not the bot's own work in
    simcord's eyes: actions settle while the job runs. ``finish_jobs`` waits for that worker. What the
    worker does is not collected by ``env.errors``: such a test checks the outcome (SQLite, messages) itself.
    """
    world.bot.backend.resume()


async def finish_jobs(world: World) -> None:
    """Wait until the queue's worker has nothing left, its status edits and deliveries are done, and the
    bot has settled."""
    backend = world.bot.backend
    assert isinstance(backend, InProcessJobBackend)
    await backend.join()
    await world.bot.jobs.drain()
    await world.env.settle()


def message_bodies(entries: list[HttpLogEntry]) -> Iterator[tuple[HttpLogEntry, dict[str, Any]]]:
    """Every request that creates or edits a message, with the message part of its body."""
    for entry in entries:
        body = entry.json
        if not isinstance(body, dict):
            continue
        if entry.path.startswith("/interactions/"):  # {"type": 4, "data": {message}}
            if body.get("type") == 9:  # a modal (a form shown to the user), not a message
                continue
            body = body.get("data") or {}
        if any(key in body for key in ("content", "embeds", "components", "attachments")):
            yield entry, body


def assert_no_mass_mentions(world: World, *, may_ping: set[int]) -> int:
    """Each message body carries allowed_mentions that allow no everyone/roles, and users only from
    ``may_ping``; returns how many bodies were checked."""
    checked = 0
    for entry, body in message_bodies(world.env.http_requests):
        mentions = body.get("allowed_mentions")
        where = f"{entry.method} {entry.path}: {str(body.get('content'))[:80]!r}"
        assert mentions is not None, f"no allowed_mentions (Discord parses everything): {where}"
        assert mentions.get("parse", []) == [], f"parses mentions: {mentions} in {where}"
        assert not mentions.get("roles"), f"allows roles: {mentions} in {where}"
        assert {int(u) for u in mentions.get("users", [])} <= may_ping, f"pings others: {mentions} in {where}"
        assert not mentions.get("replied_user"), f"pings the replied-to author: {where}"
        checked += 1
    return checked
