"""``FairWaitingLine``: the jobs both backends hold (order, running jobs, caps, positions, cancel, pause)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.jobs import Cancelled, FairWaitingLine, JobEvent, Queued, QueueFullError, Ticket


def make(**options: int) -> tuple[FairWaitingLine, list[JobEvent]]:
    events: list[JobEvent] = []
    return FairWaitingLine(emit=events.append, **options), events


def fill(line: FairWaitingLine, jobs: list[tuple[int, int]]) -> list[int]:
    return [line.add(Ticket(job_id=job, user_id=user)) for job, user in jobs]


def take_all(line: FairWaitingLine) -> list[int]:
    taken = []
    while (ticket := line.take()) is not None:
        taken.append(ticket.job_id)
    return taken


def test_round_robin_between_users_fifo_per_user() -> None:
    line, _ = make()
    positions = fill(line, [(1, 10), (2, 10), (3, 10), (4, 20), (5, 30), (6, 20)])
    assert positions == [1, 2, 3, 2, 3, 5]
    assert [t.job_id for t in line.order()] == [1, 4, 5, 2, 6, 3]
    assert take_all(line) == [1, 4, 5, 2, 6, 3]
    assert not line and len(line) == 0 and line.take() is None


def test_a_user_whose_job_was_taken_goes_to_the_back() -> None:
    line, _ = make()
    fill(line, [(1, 10), (2, 10), (3, 20)])
    assert line.take() == Ticket(job_id=1, user_id=10)
    assert [t.job_id for t in line.order()] == [3, 2]
    fill(line, [(4, 30)])  # a new user joins the round behind the users already in it
    assert [t.job_id for t in line.order()] == [3, 2, 4]


@given(st.lists(st.integers(min_value=1, max_value=4), max_size=30))
def test_taken_order_is_the_announced_order_and_fifo_per_user(users: list[int]) -> None:
    line, _ = make(max_queue=100)
    fill(line, [(job, user) for job, user in enumerate(users)])
    announced = [t.job_id for t in line.order()]
    taken = take_all(line)
    assert taken == announced and sorted(taken) == list(range(len(users)))
    for user in set(users):
        own = [job for job in taken if users[job] == user]
        assert own == sorted(own)


def test_positions_running_first_then_waiting() -> None:
    line, _ = make()
    fill(line, [(1, 10), (2, 10), (3, 20), (4, 30)])
    assert line.take() == Ticket(job_id=1, user_id=10)  # now running
    line.start(Ticket(job_id=9, user_id=40))  # running elsewhere already (a restarted bot's held job)
    assert line.snapshot() == [
        (Ticket(job_id=1, user_id=10), 0),
        (Ticket(job_id=9, user_id=40), 0),
        (Ticket(job_id=3, user_id=20), 1),
        (Ticket(job_id=4, user_id=30), 2),
        (Ticket(job_id=2, user_id=10), 3),
    ]
    assert [line.position(j) for j in (1, 9, 3, 4, 2, 99)] == [0, 0, 1, 2, 3, None]
    assert len(line) == 3 and line.held_by(10) == 2 and line.held_by(40) == 1 and line.held_by(50) == 0
    line.done(1)
    line.done(1)  # twice is harmless: a backend may hear of the end from more than one place
    assert line.position(1) is None and line.held_by(10) == 1 and list(line.running) == [9]


def test_full_line_and_user_cap_counting_running_jobs() -> None:
    line, _ = make(max_queue=3)
    line.add(Ticket(job_id=1, user_id=1), user_cap=2)
    line.add(Ticket(job_id=2, user_id=1), user_cap=2)
    assert line.take() == Ticket(job_id=1, user_id=1)  # running: still counts against the cap
    with pytest.raises(
        QueueFullError, match="you already have 2 jobs queued or running; the limit is 2"
    ) as info:
        line.add(Ticket(job_id=3, user_id=1), user_cap=2)
    assert info.value.parameter == "max_queued_per_user" and info.value.value == 2
    line.done(1)
    line.add(Ticket(job_id=3, user_id=1), user_cap=2)
    line.add(Ticket(job_id=4, user_id=2))
    with pytest.raises(QueueFullError, match=r"the queue is full \(3 jobs waiting\)") as info:
        line.add(Ticket(job_id=5, user_id=3))
    assert info.value.parameter == "queue" and info.value.allowed == "up to 3 jobs"
    assert [t.job_id for t in line.order()] == [2, 4, 3]  # refused jobs left no trace


def test_cancel_reports_and_announces_the_new_positions() -> None:
    line, events = make()
    fill(line, [(1, 10), (2, 20), (3, 20)])
    assert line.cancel(2) is True and line.cancel(2) is False and line.cancel(99) is False
    assert events == [Cancelled(2), Queued(1, 1), Queued(3, 2)]
    assert line.cancel(1) is True and line.held_by(10) == 0
    assert [t.job_id for t in line.order()] == [3]


def test_pause_holds_jobs_and_closed_takes_none() -> None:
    line, _ = make()
    fill(line, [(1, 10)])
    line.paused = True
    assert not line.ready and line.take() is None
    assert line.add(Ticket(job_id=2, user_id=20)) == 2  # submitting still works while paused
    line.paused = False
    assert line.ready and line.take() == Ticket(job_id=1, user_id=10)
    assert line.cancel(1) is False  # running: the backend stops it, the line only holds waiting jobs
    line.closed = True
    assert not line.ready and line.take() is None
    with pytest.raises(QueueFullError, match="shutting down"):
        line.add(Ticket(job_id=3, user_id=30))


def test_drain_and_announce() -> None:
    line, events = make()
    fill(line, [(1, 10), (2, 10), (3, 20)])
    line.announce()
    assert events == [Queued(1, 1), Queued(3, 2), Queued(2, 3)]
    assert [t.job_id for t in line.drain()] == [1, 3, 2]
    assert not line and line.order() == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "take", "cancel", "announce"]), st.integers(min_value=1, max_value=5)
        ),
        max_size=60,
    )
)
def test_the_kept_run_order_matches_the_queues_through_any_changes(steps: list[tuple[str, int]]) -> None:
    # The order is computed once and then updated in place by take() and add(); positions come from a
    # formula over the queues. All three must agree with an order rebuilt from scratch after every change.
    line, events = make(max_queue=1000)
    next_job = 1
    for action, number in steps:
        if action == "add":
            position = line.add(Ticket(job_id=next_job, user_id=number))
            assert position == line.position(next_job)
            next_job += 1
        elif action == "take":
            line.take()
        elif action == "cancel":
            line.cancel(number * 3)
        else:
            line.announce()
        rebuilt = FairWaitingLine(emit=events.append, max_queue=1000)
        rebuilt._queues = line._queues
        expected = rebuilt._compute_order()
        assert line.order() == expected and len(line) == len(expected)
        assert [line.position(t.job_id) for t in expected] == list(range(1, len(expected) + 1))


def test_announce_costs_the_same_however_long_the_line() -> None:
    # 2,500 waiting jobs of 250 users: each move of the line tells the first five their exact positions
    # and only the jobs that reached a milestone (10, 20, 50, ...) theirs; every told position is true.
    line, events = make(max_queue=20_000)
    fill(line, [(job, job % 250) for job in range(2_500)])
    line.take()
    line.announce()
    told = [(e.job_id, e.position) for e in events if isinstance(e, Queued)]
    assert [p for _, p in told] == [1, 2, 3, 4, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
    assert all(line.position(job) == position for job, position in told)
    # Over the whole drain a job is told its position at most 5 + 8 times (the milestones below 2,500),
    # not once per job ahead of it.
    events.clear()
    while line.take() is not None:
        line.announce()
    per_job: dict[int, int] = {}
    for event in events:
        per_job[event.job_id] = per_job.get(event.job_id, 0) + 1
    assert max(per_job.values()) == 13 and len(events) < 13 * 2_500
