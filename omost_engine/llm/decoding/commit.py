"""Commit and rewind: the decode loop's side of a pass once its tokens are decided.

``Output`` hands decided tokens out one by one and stops at a cancel; ``next_feed`` cuts the model's
cache back to what was kept and says which tokens the next pass must start with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from omost_engine.llm.decoding.prompt_lookup import PromptLookup
from omost_engine.progress import CancelToken

StopReason = Literal["stop", "length", "grammar", "cancelled"]
TokenCallback = Callable[[int], None]


class Rewindable(Protocol):
    """The part of a Stepper that commit and rewind use."""

    @property
    def length(self) -> int: ...

    def truncate(self, length: int) -> None: ...


class Output:
    """The reply so far. ``commit`` hands tokens to ``on_token`` in order and checks the cancel before
    each one, so a cancel set in a callback takes effect at the next token even inside a run one
    pass decided. Committed tokens extend the prompt lookup's sequence (drafts copy from them too)."""

    def __init__(
        self,
        *,
        on_token: TokenCallback | None = None,
        cancel: CancelToken | None = None,
        lookup: PromptLookup | None = None,
    ) -> None:
        self.tokens: list[int] = []
        self.on_token = on_token
        self.cancel = cancel
        self.lookup = lookup

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.cancelled

    def commit(self, tokens: Sequence[int]) -> bool:
        """Hand ``tokens`` out one by one; False (and the rest dropped) once cancelled."""
        kept = list(tokens)
        for count, token in enumerate(tokens):
            if self.cancelled:
                kept = kept[:count]
                break
            self.tokens.append(token)
            if self.on_token is not None:
                self.on_token(token)
        if self.lookup is not None:
            self.lookup.extend(kept)
        return not self.cancelled

    def finish(self, tokens: Sequence[int], reason: StopReason) -> StopReason:
        """Commit the last ``tokens``: ``reason`` if they all went out, else "cancelled"."""
        return reason if self.commit(tokens) else "cancelled"


def next_feed(stepper: Rewindable, *, kept_length: int, unfed: list[int], reply: Sequence[int]) -> list[int]:
    """Rewind after a pass and return the tokens the next pass starts with.

    The cache is cut to ``kept_length`` (prompt, reply so far and the kept draft). The next pass
    feeds the decided tokens the pass did not feed (``unfed``: a forced run past the kept draft, the
    sampled token). When there are none, the pass ended on a kept draft token, whose next-token
    logits were not computed: the cache steps back one token and the next pass feeds it again."""
    stepper.truncate(kept_length)
    if unfed:
        return list(unfed)
    stepper.truncate(stepper.length - 1)
    return [reply[-1]]


def trim_cache(stepper: Rewindable, reply_end: int) -> None:
    """At the end: a cancel inside a run leaves tokens in the cache the reply does not have."""
    stepper.truncate(min(stepper.length, reply_end))
