"""Helpers for the Redis tests: worker child processes, a recording stand-in for the bot's JobService."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import simcord
from simenv import World, make_config

from bot.bot import OmostBot
from bot.distributed.backend import backend_from_config
from bot.jobs import Cancelled, Failed, Finished, JobEvent, JobSpec
from omost_engine.layout import Layout
from omost_engine.params import LLMParams, RenderParams

REPO = Path(__file__).resolve().parents[3]
SMALL_RENDER = RenderParams(width=256, height=256, steps=4)


class WorkerProcess:
    """``python -m bot.distributed.worker --engine scripted`` in a child process."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        name: str,
        log_dir: Path,
        *,
        seconds: float = 0.3,
        heartbeat: float = 0.2,
        lease: float = 1.0,
    ) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bot.distributed.worker",
                    "--redis-url",
                    redis_url,
                    "--prefix",
                    prefix,
                    "--name",
                    name,
                    "--engine",
                    "scripted",
                    "--scripted-seconds",
                    str(seconds),
                    "--heartbeat",
                    str(heartbeat),
                    "--lease",
                    str(lease),
                ],
                cwd=REPO,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def wait_until(
    condition: Callable[[], object], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_until_async(
    condition: Callable[[], Awaitable[object]], *, timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class RecordingHandler:
    """Stands in for ``bot.service.JobService`` (which needs Discord): gives specs, records events."""

    def __init__(
        self,
        *,
        prompts: dict[int, str] | None = None,
        layouts: dict[int, Layout] | None = None,
        render_params: RenderParams = SMALL_RENDER,
        changes: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        self.prompts = prompts or {}
        self.layouts = layouts or {}
        self.changes = changes or {}  # job id -> JobSpec fields to set (count, base, render_params, ...)
        self.render_params = render_params
        self.prepared: list[int] = []
        self.events: list[JobEvent] = []

    async def prepare(self, job_id: int) -> JobSpec | None:
        self.prepared.append(job_id)
        spec = JobSpec(
            job_id=job_id,
            prompt=self.prompts.get(job_id, f"a lighthouse at dusk, job {job_id}"),
            history=(),
            llm=None,
            llm_params=LLMParams(),
            render_params=self.render_params,
            layout=self.layouts.get(job_id),
        )
        return replace(spec, **self.changes.get(job_id, {}))

    def on_event(self, event: JobEvent) -> None:
        self.events.append(event)

    def of(self, job_id: int, kind: type[JobEvent] = JobEvent) -> list[JobEvent]:
        return [e for e in self.events if e.job_id == job_id and isinstance(e, kind)]

    def ended(self, job_id: int) -> JobEvent | None:
        ends = [e for e in self.of(job_id) if isinstance(e, Finished | Failed | Cancelled)]
        assert len(ends) <= 1, f"job {job_id} ended more than once: {ends}"
        return ends[0] if ends else None


async def wait_for_workers(backend: object, names: set[str], *, timeout: float = 30.0) -> None:
    """Until every named worker process has sent its first heartbeat (startup imports take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        health = await backend.health()  # type: ignore[attr-defined]
        if names <= {w.worker_id for w in health.alive}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"workers {names} did not come online: {health.lines()}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def bot_on_redis(
    tmp_path: Path, redis_url: str, prefix: str, workers: set[str]
) -> AsyncIterator[World]:
    """The real bot (simcord) with the Redis backend from its configuration, once ``workers`` are online."""
    config = make_config(tmp_path)
    environ = {"OMOST_REDIS_URL": redis_url, "OMOST_REDIS_PREFIX": prefix, "OMOST_REDIS_WATCHDOG_S": "0.2"}
    backend = backend_from_config(config, environ=environ, path=tmp_path / "none.toml")
    assert backend is not None
    await wait_for_workers(backend, workers)
    bot = OmostBot(config=config, backend=backend)
    env = simcord.Env(bot)
    await env.start()
    guild = env.create_guild(name="Studio")
    world = World(
        env=env,
        bot=bot,
        engine=None,
        clock=None,
        config=config,  # type: ignore[arg-type]
        guild=guild,
        channel=guild.create_text_channel("studio"),
        alice=guild.add_member(env.create_user("alice")),
        bob=guild.add_member(env.create_user("bob")),
        admin=guild.add_member(env.create_user("admin")),
        owner=guild.add_member(env.create_user("owner")),
    )
    bot.config = replace(config, owner_ids=(world.owner.id,))
    world.extra.update(environ=environ, no_toml=tmp_path / "none.toml")
    try:
        yield world
    finally:
        await env.shutdown()
        for started in {bot, world.bot}:
            if started.db is not None:
                await started.db.close()


async def restart_on_redis(world: World) -> OmostBot:
    """The bot process dies (its Redis pump stops, nothing is acknowledged) and a new one starts."""
    old = world.bot
    await old.backend.close()
    backend = backend_from_config(world.config, environ=world.extra["environ"], path=world.extra["no_toml"])
    assert backend is not None
    world.bot = OmostBot(config=world.config, backend=backend)
    await world.env.restart_bot(world.bot)
    if old.db is not None:
        await old.db.close()
    return world.bot
