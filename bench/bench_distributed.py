"""Throughput of the Redis queue with 1, 2 and 4 worker processes, and the latency it adds per job.

The engine is the scripted one with a fixed time per job (default 0.2 s: half "LLM", half "render",
slept in small steps), so the figures measure the queue, not a GPU. Throughput: jobs per second from
the first submit to the last delivered result, against one worker. Latency: one job at a time,
submit to delivered result, Redis path (one worker process) minus the in-process queue
(``InProcessJobBackend``, same engine, same ``execute_job``) in this same process.

Starts its own redis-server on a free loopback port unless --redis-url is given.

    python bench/bench_distributed.py [--seconds 0.2] [--jobs 48] [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

# This checkout's packages, as in the worker processes it starts (cwd=REPO), not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.distributed.backend import RedisJobBackend
from bot.distributed.client import RedisConfig
from bot.jobs import Cancelled, Failed, Finished, InProcessJobBackend, JobEvent, JobSpec, Ticket
from omost_engine.params import LLMParams, RenderParams
from omost_engine.testing.scripted_engine import ScriptedEngine

REPO = Path(__file__).resolve().parents[1]
RENDER = RenderParams(width=256, height=256, steps=4)


class Recorder:
    """The bot's side, reduced to what a benchmark needs: specs out, end times in."""

    def __init__(self) -> None:
        self.ended: dict[int, float] = {}
        self.failures: list[JobEvent] = []
        self.changed = asyncio.Event()

    async def prepare(self, job_id: int) -> JobSpec:
        return JobSpec(
            job_id=job_id,
            prompt=f"a lighthouse, job {job_id}",
            history=(),
            llm=None,
            llm_params=LLMParams(),
            render_params=RENDER,
        )

    def on_event(self, event: JobEvent) -> None:
        if isinstance(event, Finished | Failed | Cancelled):
            self.ended[event.job_id] = time.perf_counter()
            if not isinstance(event, Finished):
                self.failures.append(event)
            self.changed.set()

    async def wait(self, count: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ended) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
        if self.failures:
            raise RuntimeError(f"jobs failed: {self.failures[:3]}")


def start_workers(url: str, prefix: str, count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot.distributed.worker",
                "--redis-url",
                url,
                "--prefix",
                prefix,
                "--name",
                f"w{i}",
                "--engine",
                "scripted",
                "--scripted-seconds",
                str(seconds),
            ],
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(20)


async def redis_backend(url: str, prefix: str, workers: int) -> tuple[RedisJobBackend, Recorder]:
    backend = RedisJobBackend(RedisConfig(url=url, prefix=prefix))
    recorder = Recorder()
    backend.bind(recorder)
    deadline = time.monotonic() + 60
    while len((await backend.health()).alive) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker processes did not come online")
        await asyncio.sleep(0.05)
    return backend, recorder


async def throughput(url: str, workers: int, jobs: int, seconds: float) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    processes = start_workers(url, prefix, workers, seconds)
    try:
        backend, recorder = await redis_backend(url, prefix, workers)
        started = time.perf_counter()
        for job_id in range(1, jobs + 1):
            await backend.submit(Ticket(job_id=job_id, user_id=job_id))
        await recorder.wait(jobs)
        elapsed = time.perf_counter() - started
        await backend.close()
    finally:
        stop_workers(processes)
    return jobs / elapsed


async def one_at_a_time(
    backend: RedisJobBackend | InProcessJobBackend, recorder: Recorder, rounds: int
) -> list[float]:
    latencies = []
    for job_id in range(1, rounds + 1):
        started = time.perf_counter()
        await backend.submit(Ticket(job_id=job_id, user_id=1))
        await recorder.wait(job_id)
        latencies.append(recorder.ended[job_id] - started)
    return latencies[1:]  # the first run pays one-off costs (connections, imports)


async def latency(url: str, rounds: int, seconds: float) -> tuple[list[float], list[float]]:
    engine = ScriptedEngine(chat_seconds=seconds / 2, render_seconds=seconds / 2)
    local, recorder = InProcessJobBackend(engine), Recorder()
    local.bind(recorder)
    in_process = await one_at_a_time(local, recorder, rounds)
    await local.close()
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    processes = start_workers(url, prefix, 1, seconds)
    try:
        backend, recorder = await redis_backend(url, prefix, 1)
        remote = await one_at_a_time(backend, recorder, rounds)
        await backend.close()
    finally:
        stop_workers(processes)
    return in_process, remote


def start_redis() -> tuple[str, subprocess.Popen[bytes]]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed; install it or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.mkdtemp(prefix="omost-bench-redis-"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", server


async def run(args: argparse.Namespace, url: str) -> None:
    print(
        f"fake engine: {args.seconds:g} s per job; {args.jobs} jobs per throughput run; "
        f"cpus: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}"
    )
    base = None
    for workers in () if args.latency_only else (1, 2, 4):
        rate = await throughput(url, workers, args.jobs, args.seconds)
        base = base or rate
        ideal = workers / args.seconds
        print(
            f"throughput  {workers} worker(s): {rate:6.2f} jobs/s  = {rate / base:4.2f}x one worker "
            f"({rate / ideal:5.1%} of {ideal:g} jobs/s ideal)"
        )
    in_process, remote = await latency(url, args.rounds, args.seconds)
    local_ms, remote_ms = statistics.median(in_process) * 1000, statistics.median(remote) * 1000
    print(
        f"latency per job (median of {len(remote)}): in-process {local_ms:6.1f} ms, Redis {remote_ms:6.1f} ms "
        f"-> Redis adds {remote_ms - local_ms:5.1f} ms ({remote_ms / local_ms:4.2f}x); "
        f"p90 added {(sorted(remote)[int(0.9 * len(remote))] - sorted(in_process)[int(0.9 * len(in_process))]) * 1000:5.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="an existing Redis (default: start one on loopback)")
    parser.add_argument("--seconds", type=float, default=0.2, help="fake engine time per job")
    parser.add_argument("--jobs", type=int, default=48, help="jobs per throughput run")
    parser.add_argument("--rounds", type=int, default=15, help="sequential jobs for the latency figure")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if url is None:
        url, server = start_redis()
    try:
        asyncio.run(run(args, url))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
