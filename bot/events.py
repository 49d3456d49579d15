"""What happened to a job, for whoever listens: the job service publishes a ``JobUpdate`` once it has
recorded a change (queued, a stage started, progress, the result posted, the job ended); the ``/omost`` cog
subscribes and acts on the ones its actions follow (``cogs/omost_actions.py``).

The job service's own messages (the status message, the result) do not depend on a listener: a cog that is
unloaded, or a listener that raises, changes nothing for the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Phase = Literal["queued", "llm", "render", "done", "failed", "cancelled"]
ENDED: frozenset[Phase] = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True, kw_only=True)
class JobUpdate:
    """One change of a job, after the service recorded it."""

    job_id: int
    user_id: int
    channel_id: int
    guild_id: int | None
    phase: Phase
    position: int = 0  # while queued: 1 = next to run
    fraction: float | None = None  # progress of the whole job's current stage, 0..1, when known
    message_id: int | None = None  # the result message (done), else the status message when known
    error: str | None = None  # failed: the sentence the user was shown

    @property
    def ended(self) -> bool:
        return self.phase in ENDED


JobListener = Callable[[JobUpdate], None]


class JobUpdates:
    """Listeners of job updates. ``publish`` runs on the event loop and must return quickly: a listener
    schedules slow work itself; one that raises is logged with the job id and the others still run."""

    def __init__(self) -> None:
        self._listeners: list[JobListener] = []

    def subscribe(self, listener: JobListener) -> Callable[[], None]:
        """Add ``listener``; returns the call that removes it again (a cog's unload)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, update: JobUpdate) -> None:
        for listener in list(self._listeners):
            try:
                listener(update)
            except Exception:
                log.exception("job %s: a listener of its updates failed", update.job_id)

    def __len__(self) -> int:
        return len(self._listeners)
