"""The in-process job backend: fairness, positions, caps, cancel, stage timeouts, failures."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from bot.jobs import (
    Cancelled,
    ChatDone,
    Failed,
    Finished,
    InProcessJobBackend,
    JobEvent,
    JobSpec,
    Progress,
    Queued,
    QueueFullError,
    StageTimeouts,
    Started,
    Ticket,
)
from bot.testing import ScriptedEngine
from omost_engine.errors import OmostError
from omost_engine.params import LLMParams, RenderParams
from omost_engine.reply import parse_reply

GOLDENS = Path(__file__).resolve().parents[1] / "fixtures" / "goldens"
DRAGON = json.loads((GOLDENS / "01_readme_dragon_battle.json").read_text())["bot_response"]


class Recorder:
    """A JobHandler that serves specs from a dict and records every event."""

    def __init__(self, layout_jobs: set[int] = frozenset()) -> None:
        self.events: list[JobEvent] = []
        self.skip: set[int] = set()
        self.layout_jobs = layout_jobs

    async def prepare(self, job_id: int) -> JobSpec | None:
        if job_id in self.skip:
            return None
        layout = parse_reply(DRAGON) if job_id in self.layout_jobs else None
        return JobSpec(
            job_id=job_id,
            prompt=f"prompt {job_id}",
            history=(),
            llm=None,
            llm_params=LLMParams(),
            render_params=RenderParams(steps=2, seed=job_id),
            layout=layout,
        )

    def on_event(self, event: JobEvent) -> None:
        self.events.append(event)

    def of(self, job_id: int, kind: type) -> list[JobEvent]:
        return [e for e in self.events if e.job_id == job_id and isinstance(e, kind)]


def make(
    engine: ScriptedEngine | None = None, **options: object
) -> tuple[InProcessJobBackend, Recorder, ScriptedEngine]:
    engine = engine or ScriptedEngine(replies=[DRAGON])
    backend = InProcessJobBackend(engine, **options)  # type: ignore[arg-type]
    recorder = Recorder()
    backend.bind(recorder)
    return backend, recorder, engine


async def test_round_robin_between_users_fifo_per_user() -> None:
    backend, recorder, engine = make()
    backend.pause()
    positions = [
        await backend.submit(Ticket(job_id=job, user_id=user))
        for job, user in [(1, 10), (2, 10), (3, 10), (4, 20), (5, 30), (6, 20)]
    ]
    assert positions == [1, 2, 3, 2, 3, 5]  # one job per user per round, users in arrival order
    assert [t.job_id for t, _ in backend.snapshot()] == [1, 4, 5, 2, 6, 3]
    assert backend.position(6) == 5 and backend.position(99) is None
    backend.resume()
    await backend.join()
    assert [c[1] for c in engine.calls if c[0] == "chat"] == [f"prompt {j}" for j in (1, 4, 5, 2, 6, 3)]
    assert all(recorder.of(j, Finished) for j in range(1, 7))
    # Positions were announced as the queue moved; the worker is gone once the queue is empty.
    assert recorder.of(3, Queued)[-1].position == 1
    assert backend.snapshot() == [] and backend._worker is not None and backend._worker.done()


async def test_events_of_one_job_in_order() -> None:
    backend, recorder, _ = make()
    await backend.submit(Ticket(job_id=1, user_id=1))
    await backend.join()
    await asyncio.sleep(0)  # progress hops over from the worker thread
    kinds = [type(e).__name__ for e in recorder.events if not isinstance(e, Queued | Progress)]
    assert kinds == ["Started", "ChatDone", "Started", "Finished"]
    assert [e.stage for e in recorder.of(1, Started)] == ["llm", "render"]
    finished = recorder.of(1, Finished)[0].output
    assert finished.layout.conditions == parse_reply(DRAGON).conditions and finished.render.params.seed == 1
    assert finished.chat is not None and recorder.of(1, ChatDone)[0].result.reply == DRAGON
    assert len(recorder.of(1, Progress)) == 3 + 2  # 3 LLM events, 2 steps


async def test_layout_jobs_skip_the_llm_and_skipped_jobs_do_not_run() -> None:
    engine = ScriptedEngine(replies=[DRAGON])
    backend = InProcessJobBackend(engine)
    recorder = Recorder(layout_jobs={1})
    recorder.skip.add(2)
    backend.bind(recorder)
    await backend.submit(Ticket(job_id=1, user_id=1))
    await backend.submit(Ticket(job_id=2, user_id=1))
    await backend.join()
    assert [c[0] for c in engine.calls] == ["render"]
    assert recorder.of(1, Finished)[0].output.chat is None and recorder.of(2, Started) == []


async def test_caps_and_full_queue() -> None:
    backend, _, _ = make(max_queue=3)
    backend.pause()
    await backend.submit(Ticket(job_id=1, user_id=1), user_cap=2)
    await backend.submit(Ticket(job_id=2, user_id=1), user_cap=2)
    with pytest.raises(QueueFullError, match="the limit is 2"):
        await backend.submit(Ticket(job_id=3, user_id=1), user_cap=2)
    await backend.submit(Ticket(job_id=4, user_id=2), user_cap=2)
    with pytest.raises(QueueFullError, match=r"queue is full \(3 jobs waiting\)"):
        await backend.submit(Ticket(job_id=5, user_id=3))
    assert isinstance(QueueFullError("x"), OmostError)
    await backend.close()
    with pytest.raises(QueueFullError, match="shutting down"):
        await backend.submit(Ticket(job_id=6, user_id=3))


async def test_cancel_a_waiting_job() -> None:
    backend, recorder, engine = make()
    backend.pause()
    await backend.submit(Ticket(job_id=1, user_id=1))
    await backend.submit(Ticket(job_id=2, user_id=2))
    assert await backend.cancel(1) is True and await backend.cancel(1) is False
    assert recorder.of(1, Cancelled) and recorder.of(2, Queued)[-1].position == 1
    backend.resume()
    await backend.join()
    assert [c[1] for c in engine.calls if c[0] == "chat"] == ["prompt 2"]


async def test_cancel_the_running_job_then_the_next_one_runs() -> None:
    engine = ScriptedEngine(replies=[DRAGON], gate=threading.Event())
    backend, recorder, _ = make(engine)
    await backend.submit(Ticket(job_id=1, user_id=1))
    await backend.submit(Ticket(job_id=2, user_id=2))
    await asyncio.to_thread(engine.entered.wait, 5)
    assert backend.position(1) == 0  # running
    assert await backend.cancel(1) is True
    engine.gate.set()  # type: ignore[union-attr]
    await backend.join()
    assert recorder.of(1, Cancelled) and not recorder.of(1, Finished) and recorder.of(2, Finished)


async def test_stage_timeout_stops_the_engine_and_the_worker_goes_on() -> None:
    engine = ScriptedEngine(replies=[DRAGON], gate=threading.Event())
    backend, recorder, _ = make(engine, timeouts=StageTimeouts(llm=0.05, render=5))
    await backend.submit(Ticket(job_id=1, user_id=1))
    await backend.join()
    failed = recorder.of(1, Failed)
    assert failed and failed[0].stage == "llm" and "LLM step took longer than 0.05 s" in failed[0].message
    engine.gate.set()  # type: ignore[union-attr]
    await backend.submit(Ticket(job_id=2, user_id=1))
    await backend.join()
    assert recorder.of(2, Finished)


@pytest.mark.parametrize(
    ("stage", "error", "expected"),
    [
        ("chat", RuntimeError("weights missing"), "the LLM step failed because of an error on my side"),
        (
            "render",
            RuntimeError("CUDA out of memory"),
            "the render step failed because of an error on my side",
        ),
        ("chat", OmostError("the LLM's reply is not a valid canvas program: line 3: bad"), "line 3: bad"),
    ],
)
async def test_engine_failures_become_one_message(stage: str, error: Exception, expected: str) -> None:
    backend, recorder, engine = make()
    engine.fail_next(stage, error)
    await backend.submit(Ticket(job_id=1, user_id=1))
    await backend.submit(Ticket(job_id=2, user_id=1))
    await backend.join()
    failed = recorder.of(1, Failed)
    assert failed and expected in failed[0].message
    assert failed[0].stage == ("llm" if stage == "chat" else "render")
    assert recorder.of(2, Finished)


async def test_close_cancels_the_running_job() -> None:
    engine = ScriptedEngine(replies=[DRAGON], gate=threading.Event())
    backend, recorder, _ = make(engine)
    await backend.submit(Ticket(job_id=1, user_id=1))
    await asyncio.to_thread(engine.entered.wait, 5)
    await backend.close()
    assert recorder.of(1, Cancelled)


async def test_a_gate_left_closed_fails_its_stage_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = ScriptedEngine(
        replies=[DRAGON], gate=threading.Event(), gate_stages={"render"}, gate_timeout=0.05
    )
    backend, recorder, _ = make(engine)
    with caplog.at_level("ERROR", logger="bot.jobs"):
        await backend.submit(Ticket(job_id=1, user_id=1))
        await backend.join()
    failed = recorder.of(1, Failed)
    assert failed and failed[0].stage == "render" and "render step failed" in failed[0].message
    assert "render gate stayed closed" in caplog.text  # the engine's own words are in the log
    assert recorder.of(1, ChatDone) and engine.cancelled == [] and not engine.at_gate.is_set()


CUDA_DUMP = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; 21.10 GiB already "
    "allocated) at /home/omost/.cache/huggingface/hub/models--stabilityai/snapshots/abc/unet.safetensors"
)


@pytest.mark.parametrize("stage", ["chat", "render"])
async def test_an_engine_crash_is_logged_with_its_traceback_and_the_user_gets_one_sentence(
    stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend, recorder, engine = make()
    engine.fail_next(stage, RuntimeError(CUDA_DUMP))
    with caplog.at_level("WARNING", logger="bot.jobs"):
        await backend.submit(Ticket(job_id=7, user_id=1))
        await backend.join()
    (failed,) = recorder.of(7, Failed)
    assert "job #7" in failed.message and "logged" in failed.message
    assert (
        "CUDA" not in failed.message
        and "/home" not in failed.message
        and "RuntimeError" not in failed.message
    )
    (record,) = [r for r in caplog.records if r.name == "bot.jobs"]
    assert record.levelname == "ERROR" and "job 7" in record.getMessage()
    assert record.exc_info is not None and CUDA_DUMP in str(record.exc_info[1])


async def test_bookkeeping_that_fails_before_the_start_is_logged_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend, recorder, _ = make()

    async def broken(job_id: int) -> JobSpec | None:
        raise OSError("disk I/O error at /var/lib/omost/bot.sqlite3")

    recorder.prepare = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="bot.jobs"):
        await backend.submit(Ticket(job_id=3, user_id=1))
        await backend.join()
    (failed,) = recorder.of(3, Failed)
    assert "could not start" in failed.message and "job #3" in failed.message and "/var" not in failed.message
    (record,) = caplog.records
    assert "job 3" in record.getMessage() and record.exc_info is not None
