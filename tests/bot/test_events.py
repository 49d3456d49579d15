"""The job-update hub: listeners in the order they subscribed, removed by the call subscribe returns, and one
that raises does not stop the others."""

from __future__ import annotations

import logging

import pytest

from bot.events import JobUpdate, JobUpdates


def update(phase: str = "queued", job_id: int = 7) -> JobUpdate:
    return JobUpdate(job_id=job_id, user_id=1, channel_id=2, guild_id=3, phase=phase)  # type: ignore[arg-type]  # phases as plain strings keep the table short


def test_listeners_hear_updates_in_subscription_order_until_they_unsubscribe() -> None:
    hub = JobUpdates()
    heard: list[tuple[str, str]] = []
    stop_a = hub.subscribe(lambda u: heard.append(("a", u.phase)))
    hub.subscribe(lambda u: heard.append(("b", u.phase)))
    hub.publish(update("queued"))
    stop_a()
    stop_a()  # a second call is harmless
    hub.publish(update("done"))
    assert heard == [("a", "queued"), ("b", "queued"), ("b", "done")]
    assert len(hub) == 1


def test_a_listener_that_raises_is_logged_with_the_job_id_and_the_next_still_hears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = JobUpdates()
    heard: list[int] = []

    def broken(u: JobUpdate) -> None:
        raise ValueError("boom")

    hub.subscribe(broken)
    hub.subscribe(lambda u: heard.append(u.job_id))
    with caplog.at_level(logging.ERROR, logger="bot.events"):
        hub.publish(update(job_id=42))
    assert heard == [42]
    (record,) = caplog.records
    assert "job 42" in record.getMessage() and record.exc_info is not None


@pytest.mark.parametrize(
    ("phase", "ended"),
    [("queued", False), ("render", False), ("done", True), ("failed", True), ("cancelled", True)],
)
def test_ended_is_true_for_the_last_update_of_a_job_only(phase: str, ended: bool) -> None:
    assert update(phase).ended is ended
