"""The job queue: a ``JobBackend`` interface and its in-process implementation (one GPU worker).

The bot (``bot.service.JobService``) owns the database; a backend only schedules and runs:

* ``submit(ticket)`` queues a job id; fairness is round-robin between users, FIFO per user.
* When a job reaches the GPU the backend asks the bot for its ``JobSpec`` (``JobHandler.prepare``):
  the history is read then, so a turn queued behind another of the same conversation sees its reply.
* The work itself is ``execute_job(engine, spec, ...)``: blocking engine calls in a worker thread,
  with a timeout per stage and a ``CancelToken``. A distributed backend runs the same function in its
  worker process and forwards the same events.
* Everything that happens is a ``JobEvent`` given to ``JobHandler.on_event`` on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from omost_engine.engine import ChatMessage, ChatResult, Engine, RenderResult
from omost_engine.errors import CancelledError, OmostError
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import CancelToken, LLMProgress, RenderProgress

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from omost_engine.layout import Layout

Stage = Literal["llm", "render"]

log = logging.getLogger(__name__)


def internal_failure(job_id: int | str, what: str) -> str:
    """The user's sentence for a failure on our side: what failed and the job id the log has it under.
    Never the exception's own text: it may hold paths, tokens or a CUDA allocator dump."""
    return f"{what} because of an error on my side; it was logged under job #{job_id}. Please try again"


class QueueFullError(OmostError):
    """The queue (or this user's share of it) has no room; nothing was queued."""


@dataclass(frozen=True, kw_only=True)
class Ticket:
    """What a backend needs to schedule a job (JSON-able, so it can travel to another process)."""

    job_id: int
    user_id: int


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """Everything one run needs. ``layout`` set: render it without the LLM. ``count`` images (variations:
    seeds ``render_params.seed``, +1, ...); ``base``: an upscale's image without the high-res pass (the same
    layout and seed), so only the high-res pass runs."""

    job_id: int
    prompt: str
    history: Sequence[ChatMessage]
    llm: str | None
    llm_params: LLMParams
    render_params: RenderParams
    layout: Layout | None = None
    sdxl: str | None = None
    count: int = 1
    base: PILImage | None = None


@dataclass(frozen=True, kw_only=True)
class JobOutput:
    chat: ChatResult | None  # None for a layout-only render
    render: RenderResult
    layout: Layout


# -- events ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobEvent:
    job_id: int


@dataclass(frozen=True)
class Queued(JobEvent):
    position: int  # 1 = next to run


@dataclass(frozen=True)
class Requeued(JobEvent):
    """The job's worker was lost mid-job; the job waits for another worker (distributed backends)."""

    attempt: int  # the run that comes next (2 = the first retry)
    reason: str = "worker lost"


@dataclass(frozen=True)
class Started(JobEvent):
    stage: Stage


@dataclass(frozen=True)
class Progress(JobEvent):
    progress: LLMProgress | RenderProgress
    at: float = field(default=0.0)  # monotonic seconds when the engine reported it


@dataclass(frozen=True)
class ChatDone(JobEvent):
    result: ChatResult


@dataclass(frozen=True)
class Finished(JobEvent):
    output: JobOutput


@dataclass(frozen=True)
class Failed(JobEvent):
    stage: Stage | None
    message: str  # one sentence for the user


@dataclass(frozen=True)
class Cancelled(JobEvent):
    """The job stopped because its user (or an admin) cancelled it."""


class JobHandler(Protocol):
    """The bot's side of a backend."""

    async def prepare(self, job_id: int) -> JobSpec | None:
        """The spec of a job about to run (and mark it running); None skips it (cancelled meanwhile)."""
        ...

    def on_event(self, event: JobEvent) -> None:
        """Called on the event loop for every event; must return quickly (schedule slow work)."""
        ...


class JobBackend(Protocol):
    """Where jobs wait and run. ``InProcessJobBackend`` here; a distributed one can replace it."""

    def bind(self, handler: JobHandler) -> None:
        """Set the receiver of ``prepare`` calls and events (once, before the first submit)."""
        ...

    async def submit(self, ticket: Ticket, *, user_cap: int | None = None) -> int:
        """Queue a job; returns its position (1 = next). Raises ``QueueFullError`` when there is no room."""
        ...

    async def cancel(self, job_id: int) -> bool:
        """Cancel a waiting or running job; False if the backend does not hold it."""
        ...

    def position(self, job_id: int) -> int | None:
        """0 while running, 1.. while waiting, None when unknown."""
        ...

    def snapshot(self) -> list[tuple[Ticket, int]]:
        """Every held job with its position, running first, then in the order they will run."""
        ...

    def pause(self) -> None:
        """Start no more jobs (maintenance); the running one finishes. Submitting still works."""
        ...

    def resume(self) -> None:
        """Start jobs again."""
        ...

    async def close(self) -> None:
        """Stop taking jobs, cancel the running one and wait for the worker to stop."""
        ...


# -- running one job -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StageTimeouts:
    llm: float = 900.0
    render: float = 900.0


StageResult = TypeVar("StageResult")


async def _run_stage(
    stage: Stage, timeout: float, token: CancelToken, call: Callable[[], StageResult]
) -> StageResult:
    """Run ``call`` in a thread; at the timeout ask it to stop (the engine honours the token) and fail."""
    work = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.wait_for(asyncio.shield(work), timeout)
    except TimeoutError:
        token.cancel()
        with contextlib.suppress(CancelledError):
            await work
        raise OmostError(
            f"the {'LLM' if stage == 'llm' else 'render'} step took longer than {timeout:g} s "
            "and was stopped",
            parameter=f"{stage}_timeout_s",
            value=timeout,
        ) from None
    except asyncio.CancelledError:  # the bot is shutting down: stop the thread too
        token.cancel()
        raise


async def execute_job(
    engine: Engine,
    spec: JobSpec,
    *,
    emit: Callable[[JobEvent], None],
    cancel: CancelToken,
    timeouts: StageTimeouts = StageTimeouts(),
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run one job (LLM turn unless a layout is given, then the render), reporting through ``emit``.

    ``emit`` is called on the event loop; progress from the worker thread hops over thread-safely.
    Engine failures become ``Failed`` events with one clear sentence; this function never raises for them.
    """
    loop = asyncio.get_running_loop()
    stage: Stage = "llm"

    def on_progress(progress: LLMProgress | RenderProgress) -> None:
        loop.call_soon_threadsafe(emit, Progress(spec.job_id, progress, clock()))

    try:
        chat: ChatResult | None = None
        layout = spec.layout
        if layout is None:
            emit(Started(spec.job_id, "llm"))
            chat = await _run_stage(
                "llm",
                timeouts.llm,
                cancel,
                lambda: engine.chat(
                    spec.history,
                    spec.prompt,
                    spec.llm_params,
                    llm=spec.llm,
                    on_progress=on_progress,
                    cancel=cancel,
                ),
            )
            assert isinstance(chat, ChatResult)
            layout = chat.layout
            emit(ChatDone(spec.job_id, chat))
        cancel.raise_if_cancelled()
        stage = "render"
        emit(Started(spec.job_id, "render"))
        render = await _run_stage(
            "render",
            timeouts.render,
            cancel,
            lambda: engine.render(
                layout,
                spec.render_params,
                model=spec.sdxl,
                on_progress=on_progress,
                cancel=cancel,
                count=spec.count,
                base=spec.base,
            ),
        )
        assert isinstance(render, RenderResult)
        emit(Finished(spec.job_id, JobOutput(chat=chat, render=render, layout=layout)))
    except CancelledError:
        emit(Cancelled(spec.job_id))
    except OmostError as exc:  # a clear reason meant for the user (a timeout, a bad program); logged too
        log.warning("job %s: the %s step failed: %s", spec.job_id, stage, exc, exc_info=True)
        emit(Failed(spec.job_id, stage, str(exc)))
    except Exception:  # an engine bug or a GPU error: the traceback to the log, one sentence to the user
        log.exception("job %s: the %s step failed", spec.job_id, stage)
        step = "the LLM step" if stage == "llm" else "the render step"
        emit(Failed(spec.job_id, stage, internal_failure(spec.job_id, f"{step} failed")))


# -- the waiting line --------------------------------------------------------------------------------------


# Positions a waiting job is told exactly, on every move of the line; beyond them only on reaching a
# milestone of POSITION_MILESTONES, so that a job costs a bounded number of status edits however long the
# line is (each announcement is one edit of a status message on Discord).
EXACT_POSITIONS = 5
POSITION_MILESTONES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)


class FairWaitingLine:
    """The jobs a backend holds, shared by every backend so positions and caps read the same with each.

    Waiting jobs stand in one FIFO queue per user; the line takes one job per user per round, users in
    turn order (a user whose job was taken goes to the back). A taken job counts as running (position 0,
    and against its user's cap) until the backend calls ``done``. The line also owns the pause switch and
    the position announcements; how a job runs is the backend's business.

    Taking the next job moves every waiting job up by exactly one place, so the run order is kept as a
    list once computed and updated in place (take, add); announcing costs the same however long the line.
    """

    def __init__(
        self, *, max_queue: int = 50, emit: Callable[[JobEvent], None], exact_positions: int = EXACT_POSITIONS
    ) -> None:
        self.max_queue = max_queue
        self.emit = emit
        self.exact_positions = exact_positions
        self.paused = False  # maintenance: jobs wait, submitting still works
        self.closed = False  # shutting down: no more jobs in or out
        self._queues: OrderedDict[int, deque[Ticket]] = OrderedDict()  # user -> jobs, in turn order
        self.running: dict[int, Ticket] = {}  # taken and not yet done, in the order they started
        self._waiting = 0
        # The run order, from _order[_order_start] on; None until needed (and after a cancel).
        self._order: list[Ticket] | None = None
        self._order_start = 0

    def __len__(self) -> int:
        """Waiting jobs (running ones not counted)."""
        return self._waiting

    def __bool__(self) -> bool:
        return bool(self._queues)

    @property
    def ready(self) -> bool:
        """A job may start now."""
        return bool(self._queues) and not (self.paused or self.closed)

    def _compute_order(self) -> list[Ticket]:
        queues = [list(q) for q in self._queues.values()]
        order: list[Ticket] = []
        for round_index in range(max((len(q) for q in queues), default=0)):
            order += [q[round_index] for q in queues if round_index < len(q)]
        return order

    def _ordered(self) -> list[Ticket]:
        """The run order (shared list: callers read from ``_order_start`` on and never change it)."""
        if self._order is None:
            self._order, self._order_start = self._compute_order(), 0
        return self._order

    def order(self) -> list[Ticket]:
        """Waiting jobs in the order they will run: one per user per round, users in turn order."""
        return self._ordered()[self._order_start :]

    def positions(self) -> list[tuple[Ticket, int]]:
        """Waiting jobs with their positions (1 = next), in the order they will run."""
        return [(ticket, i) for i, ticket in enumerate(self.order(), start=1)]

    def snapshot(self) -> list[tuple[Ticket, int]]:
        """Every held job with its position: running ones (0) first, then the waiting ones in order."""
        return [(ticket, 0) for ticket in self.running.values()] + self.positions()

    def _position_in_queue(self, user_id: int, index: int) -> int:
        """The position of the user's job at ``index`` of their queue, without building the order: every
        job of an earlier round, plus those of this round whose users come first in turn order."""
        ahead = 0
        before = True
        for other, queue in self._queues.items():
            if other == user_id:
                before = False
            ahead += min(len(queue), index + 1 if before else index)
        return ahead + 1

    def position(self, job_id: int) -> int | None:
        """0 while running, 1.. while waiting, None when the line does not hold the job."""
        if job_id in self.running:
            return 0
        for user_id, queue in self._queues.items():
            for index, ticket in enumerate(queue):
                if ticket.job_id == job_id:
                    return self._position_in_queue(user_id, index)
        return None

    def held_by(self, user_id: int) -> int:
        """The user's jobs, running or waiting."""
        running = sum(1 for ticket in self.running.values() if ticket.user_id == user_id)
        return running + len(self._queues.get(user_id, ()))

    def refuse_if_closed(self) -> None:
        if self.closed:
            raise QueueFullError("the bot is shutting down; try again in a minute", parameter="queue")

    def add(self, ticket: Ticket, *, user_cap: int | None = None) -> int:
        """Queue a job behind its user's others; returns its position (1 = next).

        Raises ``QueueFullError`` (nothing queued) when shut, full, or the user holds ``user_cap`` jobs.
        """
        self.refuse_if_closed()
        waiting = len(self)
        if waiting >= self.max_queue:
            raise QueueFullError(
                f"the queue is full ({self.max_queue} jobs waiting); try again later",
                parameter="queue",
                value=waiting,
                allowed=f"up to {self.max_queue} jobs",
            )
        held = self.held_by(ticket.user_id)
        if user_cap is not None and held >= user_cap:
            raise QueueFullError(
                f"you already have {held} jobs queued or running; the limit is {user_cap}."
                " Wait for one to finish or cancel one with /omost cancel",
                parameter="max_queued_per_user",
                value=held,
                allowed=f"up to {user_cap}",
            )
        queue = self._queues.setdefault(ticket.user_id, deque())
        queue.append(ticket)
        self._waiting += 1
        position = self._position_in_queue(ticket.user_id, len(queue) - 1)
        if self._order is not None:
            self._order.insert(self._order_start + position - 1, ticket)
        return position

    def take(self) -> Ticket | None:
        """The next job to start, now running; None when none may start (empty, paused or closed)."""
        if not self.ready:
            return None
        user_id, queue = next(iter(self._queues.items()))
        ticket = queue.popleft()
        del self._queues[user_id]
        if queue:  # this user goes to the back of the round
            self._queues[user_id] = queue
        self._waiting -= 1
        if self._order is not None:  # the head of the order was taken: everyone else moves up by one
            self._order_start += 1
            if self._order_start > 1024 and self._order_start * 2 > len(self._order):
                del self._order[: self._order_start]
                self._order_start = 0
        self.running[ticket.job_id] = ticket
        return ticket

    def start(self, ticket: Ticket) -> None:
        """Count a job as running that did not come through ``take`` (one a restarted bot finds on a worker)."""
        self.running[ticket.job_id] = ticket

    def done(self, job_id: int) -> None:
        """The job ended or never started; its slot and its user's share are free."""
        self.running.pop(job_id, None)

    def cancel(self, job_id: int) -> bool:
        """Drop a waiting job, report it cancelled and the others' new positions; False if it is not here."""
        for user_id, queue in self._queues.items():
            for ticket in queue:
                if ticket.job_id == job_id:
                    queue.remove(ticket)
                    if not queue:
                        del self._queues[user_id]
                    self._waiting -= 1
                    self._order = None  # the user's later jobs change rounds: computed again when needed
                    self.emit(Cancelled(job_id))
                    self.announce()
                    return True
        return False

    def drain(self) -> list[Ticket]:
        """Empty the line; the jobs it held, in the order they would have run."""
        tickets = self.order()
        self._queues.clear()
        self._waiting = 0
        self._order, self._order_start = None, 0
        return tickets

    def announce(self) -> None:
        """Tell waiting jobs their positions after the line moved: the first ``exact_positions`` jobs always,
        the others when they reach a position of ``POSITION_MILESTONES`` (a bounded number of updates per
        job, whatever the length of the line)."""
        order, start = self._ordered(), self._order_start
        waiting = len(order) - start
        for position in range(1, min(self.exact_positions, waiting) + 1):
            self.emit(Queued(order[start + position - 1].job_id, position))
        for position in POSITION_MILESTONES:
            if position > waiting:
                break
            if position > self.exact_positions:
                self.emit(Queued(order[start + position - 1].job_id, position))


class LineBackend:
    """What every backend shares: the handler it reports to, and its jobs in a ``FairWaitingLine``."""

    def __init__(self, *, max_queue: int) -> None:
        self._handler: JobHandler | None = None
        self._line = FairWaitingLine(max_queue=max_queue, emit=self._emit)

    @property
    def max_queue(self) -> int:
        return self._line.max_queue

    def bind(self, handler: JobHandler) -> None:
        self._handler = handler

    def snapshot(self) -> list[tuple[Ticket, int]]:
        return self._line.snapshot()

    def position(self, job_id: int) -> int | None:
        return self._line.position(job_id)

    @property
    def waiting(self) -> int:
        return len(self._line)

    def held_by(self, user_id: int) -> int:
        return self._line.held_by(user_id)

    def pause(self) -> None:
        """Hold waiting jobs (maintenance); running jobs go on. Submitting still works."""
        self._line.paused = True

    def _emit(self, event: JobEvent) -> None:
        if self._handler is not None:
            self._handler.on_event(event)


# -- the in-process backend -------------------------------------------------------------------------------


class InProcessJobBackend(LineBackend):
    """One worker on this process's GPU. The worker task exists only while jobs are waiting or running."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 50,
        timeouts: StageTimeouts = StageTimeouts(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_queue=max_queue)
        self.engine = engine
        self.timeouts = timeouts
        self.clock = clock
        self._token: CancelToken | None = None  # of the running job
        self._worker: asyncio.Task[None] | None = None

    # -- changes ------------------------------------------------------------------------------------------

    async def submit(self, ticket: Ticket, *, user_cap: int | None = None) -> int:
        position = self._line.add(ticket, user_cap=user_cap)
        self._wake()
        return position

    async def cancel(self, job_id: int) -> bool:
        if job_id in self._line.running and self._token is not None:
            self._token.cancel()  # the worker reports Cancelled when the engine stops
            return True
        return self._line.cancel(job_id)

    def resume(self) -> None:
        self._line.paused = False
        self._wake()

    async def close(self) -> None:
        self._line.closed = True
        if self._token is not None:
            self._token.cancel()
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)

    async def join(self) -> None:
        """Wait until the worker has nothing left to do (tests, benchmarks, graceful stops)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    # -- the worker ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        # Started on demand and gone when idle: no task sits forever on an empty queue.
        if self._line.ready and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="omost-gpu-worker")

    async def _work(self) -> None:
        assert self._handler is not None, "bind() the backend to a handler before submitting"
        while (ticket := self._line.take()) is not None:
            self._token = token = CancelToken()
            self._line.announce()
            try:
                spec = await self._handler.prepare(ticket.job_id)
                if spec is not None:
                    await execute_job(
                        self.engine,
                        spec,
                        emit=self._emit,
                        cancel=token,
                        timeouts=self.timeouts,
                        clock=self.clock,
                    )
            except asyncio.CancelledError:
                raise
            except Exception:  # the bot's own bookkeeping failed (e.g. the database): log, report, go on
                log.exception("job %s: could not start", ticket.job_id)
                self._emit(
                    Failed(ticket.job_id, None, internal_failure(ticket.job_id, "the job could not start"))
                )
            finally:
                self._line.done(ticket.job_id)
                self._token = None
