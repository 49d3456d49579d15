"""How much latency the bot adds, and its throughput, with many simulated users and an instant engine.

Everything runs in one process on simcord (the Discord simulator the tests use), so the figures are
the bot's own cost: validation, SQLite, the queue, status edits, image encoding and uploads.
The baseline, measured in the same process, is a bare discord.py bot whose slash command answers
with the same PNG: the floor any bot pays for one interaction and one upload. Ratios are against it.
It also counts the Discord requests each job costs (acknowledgement, status edits, result): with the
queue full, status edits are held to the bot-wide budget (``status_edits_per_s``), so the cost of a
job does not grow with the length of the queue.

    python bench/bench_bot.py [--users 40] [--jobs-per-user 5]
    python bench/bench_bot.py --users 1000 --jobs-per-user 10   # 10,000 queued jobs
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
from pathlib import Path

import discord
import simcord
from discord.ext import commands
from PIL import Image

from bot.bot import OmostBot
from bot.config import BotConfig
from bot.jobs import Finished, JobEvent, Started
from bot.testing import ScriptedEngine

AIMS = {"bot time per job p99 (ms)": 50.0, "Discord requests per job": 5.0}

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "goldens" / "01_readme_dragon_battle.json"


def count_requests(entries: list) -> dict[str, int]:  # type: ignore[type-arg]
    """simcord's request log, by what each request was for."""
    counts = {"acknowledgements": 0, "results": 0, "status edits": 0, "other": 0}
    for entry in entries:
        content = str(
            (entry.json or {}).get("content") or (entry.json or {}).get("data", {}).get("content") or ""
        )
        if entry.method == "POST" and entry.path.endswith("/callback"):
            counts["acknowledgements"] += 1
        elif content.startswith("✅"):
            counts["results"] += 1
        elif entry.method == "PATCH":
            counts["status edits"] += 1
        else:
            counts["other"] += 1
    return counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values: list[float], baseline: list[float] | None = None) -> str:
    p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
    text = f"{name:<44} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (n={len(values)})"
    if baseline:
        text += (
            f"   x{p50 / (percentile(baseline, 0.5) * 1000):.2f} / "
            f"x{p99 / (percentile(baseline, 0.99) * 1000):.2f} of baseline"
        )
    return text


class TimedEngine:
    """The scripted engine, keeping how long each job spent inside it (keyed by the LLM seed = job order)."""

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.image_size = engine.image_size
        self.seconds: dict[int, float] = {}
        self._job = 0

    def chat(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        self._job += 1
        start = time.perf_counter()
        try:
            return self.engine.chat(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.seconds[self._job] = time.perf_counter() - start

    def render(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return self.engine.render(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.seconds[self._job] += time.perf_counter() - start


def engine_image_png(engine: ScriptedEngine) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", engine.image_size, (90, 120, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


async def baseline(requests: int, png: bytes) -> list[float]:
    """A bare bot: one slash command that answers with a PNG."""

    class Bare(commands.Bot):
        async def setup_hook(self) -> None:
            await self.tree.sync()

    bare = Bare(command_prefix="!", intents=discord.Intents.default())

    @bare.tree.command(name="draw", description="answer with a picture")
    async def draw(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.send_message(
            prompt, file=discord.File(io.BytesIO(png), filename="image.png")
        )

    latencies = []
    async with simcord.run(bare) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("bench")
        user = guild.add_member(env.create_user("user"))
        for i in range(requests):
            start = time.perf_counter()
            await user.slash(channel, "draw", prompt=f"request {i}")
            latencies.append(time.perf_counter() - start)
    return latencies


async def omost(users: int, jobs_per_user: int, db_dir: Path) -> dict[str, object]:
    replies = [json.loads(GOLDEN.read_text())["bot_response"]]
    engine = TimedEngine(ScriptedEngine(replies=replies, llm_events=3))
    config = BotConfig(
        db=db_dir / "bench.sqlite3",
        max_queue=min(users * jobs_per_user + 10, 10_000),  # the declared ceiling: 10,000 waiting jobs
        max_queued_per_user=jobs_per_user,
        rate_limit=10_000,
        # The instant engine needs milliseconds. Short stage timeouts because simcord keeps a cancelled timer
        # until it would have fired and scans them all while settling: with the default 900 s, two per job
        # pile up and slow the simulator (not the bot) as a long drain goes on.
        llm_timeout_s=10.0,
        render_timeout_s=10.0,
    )
    bot = OmostBot(config=config, engine=engine)
    started: dict[int, float] = {}
    engine_done: dict[int, float] = {}
    finished: dict[int, float] = {}
    async with simcord.run(bot, settle_timeout=3600) as env:
        original = bot.jobs.on_event

        def timed(event: JobEvent) -> None:
            if isinstance(event, Started) and event.stage == "llm":
                started[event.job_id] = time.perf_counter()
            if isinstance(event, Finished):
                engine_done[event.job_id] = time.perf_counter()
            original(event)

        bot.jobs.on_event = timed  # type: ignore[method-assign]
        original_deliver = bot.jobs._deliver

        async def deliver(tracker, output) -> None:  # type: ignore[no-untyped-def]
            await original_deliver(tracker, output)
            finished[tracker.job_id] = time.perf_counter()

        bot.jobs._deliver = deliver  # type: ignore[method-assign]
        guild = env.create_guild()
        channel = guild.create_text_channel("bench")
        members = [guild.add_member(env.create_user(f"user{i}")) for i in range(users)]
        owner = members[0]
        bot.config = BotConfig(**{**config.__dict__, "owner_ids": (owner.id,)})

        # 1. Idle queue: one request at a time, the whole job inside the measurement (after one warm-up
        #    request that loads fonts and fills caches).
        await members[0].slash(channel, "omost compose", prompt="warm-up", steps=2)
        idle = []
        idle_first = len(env.http_requests)
        for i in range(min(100, users * jobs_per_user)):
            member = members[i % users]
            start = time.perf_counter()
            await member.slash(channel, "omost compose", prompt=f"idle request {i}", steps=2)
            idle.append(time.perf_counter() - start)
        idle_requests = count_requests(env.http_requests[idle_first:])

        # 2. Busy queue: everyone submits while the queue is held, then it drains.
        await owner.slash(channel, "omost pause")
        busy_first = len(env.http_requests)
        acks = []
        submitted = 0
        for round_index in range(jobs_per_user):
            for member in members:
                start = time.perf_counter()
                result = await member.slash(channel, "omost compose", prompt=f"job {round_index}", steps=2)
                acks.append(time.perf_counter() - start)
                assert result.response is not None and "queue" in result.response.content, result.response
                submitted += 1
        before = bot.jobs.delivered
        drain_start = time.perf_counter()
        await owner.slash(channel, "omost resume")
        drain_seconds = time.perf_counter() - drain_start
        busy_requests = count_requests(env.http_requests[busy_first:])
        delivered = bot.jobs.delivered - before
        drained = [j for j in finished if j in started and finished[j] > drain_start]
        # What the bot adds to a job: its whole time on the GPU worker's turn minus the engine's own work.
        per_job = [finished[j] - started[j] - engine.seconds[j] for j in drained]
        delivery = [finished[j] - engine_done[j] for j in drained]
        lost = await bot.storage.db.fetchone("SELECT COUNT(*) AS n FROM jobs WHERE state != 'done'")
    await bot.storage.db.close()  # simcord stops the bot without close(); the SQLite thread must end
    return {
        "idle": idle,
        "acks": acks,
        "delivery": delivery,
        "engine": list(engine.seconds.values()),
        "submitted": submitted,
        "delivered": delivered,
        "drain_seconds": drain_seconds,
        "per_job": per_job,
        "not_done": int(lost["n"]),
        "idle_requests": idle_requests,
        "idle_jobs": len(idle),
        "busy_requests": busy_requests,
        "drain_tenths": drain_tenths(sorted(finished[j] for j in drained), drain_start),
    }


def drain_tenths(done_at: list[float], start: float) -> list[float]:
    """Jobs per second in each tenth of the drain (the first tenth with the longest queue)."""
    rates, previous = [], start
    for tenth in range(1, 11):
        chunk = done_at[(tenth - 1) * len(done_at) // 10 : tenth * len(done_at) // 10]
        if chunk:
            rates.append(len(chunk) / max(chunk[-1] - previous, 1e-9))
            previous = chunk[-1]
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--jobs-per-user", type=int, default=5)
    args = parser.parse_args()
    engine = ScriptedEngine(replies=["unused"])
    png = engine_image_png(engine)
    with tempfile.TemporaryDirectory() as tmp:
        base = await baseline(100, png)
        result = await omost(args.users, args.jobs_per_user, Path(tmp))
    print(f"simulated users: {args.users}, jobs per user: {args.jobs_per_user}, instant scripted engine")
    print(summary("baseline: bare slash command + PNG upload", base))
    print(summary("scripted engine itself (inside the jobs)", result["engine"]))  # type: ignore[arg-type]
    print(summary("omost: whole job on an idle queue", result["idle"], base))  # type: ignore[arg-type]
    print(summary("omost: acknowledgement with status message", result["acks"], base))  # type: ignore[arg-type]
    print(summary("omost: bot time per job (engine excluded)", result["per_job"], base))  # type: ignore[arg-type]
    print(summary("omost: engine done -> result shown", result["delivery"], base))  # type: ignore[arg-type]
    submitted, delivered = result["submitted"], result["delivered"]
    seconds = result["drain_seconds"]
    print(
        f"throughput while draining: {delivered / seconds:.1f} jobs/s ({delivered} jobs in {seconds:.2f} s)"
    )  # type: ignore[operator]
    tenths = " ".join(f"{rate:.0f}" for rate in result["drain_tenths"])  # type: ignore[attr-defined]
    print(f"throughput by tenth of the drain, longest queue first (jobs/s): {tenths}")
    print(
        f"requests submitted {submitted}, results delivered {delivered}, jobs not done {result['not_done']}"
        f" -> {'no request lost' if submitted == delivered and result['not_done'] == 0 else 'REQUESTS LOST'}"
    )
    for name, counts, jobs in (
        ("idle queue", result["idle_requests"], result["idle_jobs"]),
        ("full queue", result["busy_requests"], submitted),
    ):
        total = sum(counts.values())  # type: ignore[attr-defined]
        parts = ", ".join(f"{k} {v / jobs:.2f}" for k, v in counts.items())  # type: ignore[attr-defined,operator]
        print(f"Discord requests per job, {name}: {total / jobs:.2f} ({parts})")  # type: ignore[operator]
    per_job_p99 = percentile(result["per_job"], 0.99) * 1000  # type: ignore[arg-type]
    busy_per_job = sum(result["busy_requests"].values()) / submitted  # type: ignore[attr-defined,operator]
    for name, value in (
        ("bot time per job p99 (ms)", per_job_p99),
        ("Discord requests per job", busy_per_job),
    ):
        verdict = "ok" if value <= AIMS[name] else "OVER THE AIM"
        print(f"aim: {name} <= {AIMS[name]:g}: {value:.2f} {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
