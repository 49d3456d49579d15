"""Verification: checking a pass's draft against its logits, position by position.

At each position the check goes as plain decoding would have gone: where plain decoding would
append a forced run (right after a sampled or kept token), the draft is compared with that run;
otherwise a token is picked from the row (raw logits, then the logits hook, then the grammar mask,
on a copy) and the draft token is kept when it is the same. Greedy, that keeps a draft token while
it is the argmax; sampling, it is the speculative-sampling rule for a one-token draft (accept with
probability p(d), else sample from p without d), so drafting changes no output distribution.

The first position that disagrees supplies the next token from the same logits, so every pass
yields at least one token. The matcher ends accepted up to the last decided token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from omost_engine.llm.decoding.grammar import GrammarState
from omost_engine.llm.decoding.planning import accept_prefix
from omost_engine.llm.decoding.sequences import common_prefix_length

# (every id before the position, that position's raw logits) -> logits; e.g. transformers processors.
LogitsHook = Callable[[list[int], torch.Tensor], torch.Tensor]
# A row of (masked) logits -> the chosen token id: the sampler, a black box here.
Pick = Callable[[torch.Tensor], int]


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """What one pass decided. ``accepted``: draft positions kept (fed already, the cache keeps them);
    ``tail``: a forced run past the kept draft and ``new_token``: the token picked where the draft
    was left, both decided but not fed yet. ``forced``: tokens of forced runs met during the check;
    ``sampled``: 1 when a token was picked where the draft was left (even if the grammar then
    refused it), else 0; ``refused``: the grammar allowed nothing at the picked position (every
    logit masked), so there is no new token."""

    accepted: list[int]
    tail: list[int] = field(default_factory=list)
    new_token: int | None = None
    forced: int = 0
    sampled: int = 0
    refused: bool = False

    @property
    def unfed(self) -> list[int]:
        """Decided tokens the pass did not feed: the next pass starts with them."""
        return self.tail + ([self.new_token] if self.new_token is not None else [])

    @property
    def tokens(self) -> list[int]:
        """Every token the pass decided, in order."""
        return self.accepted + self.unfed


@dataclass(kw_only=True, slots=True)
class _Tally:
    """The check in progress."""

    draft: Sequence[int]
    limit: int  # tokens the pass may decide
    accepted: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)
    new_token: int | None = None
    forced: int = 0

    @property
    def index(self) -> int:
        """The draft position being checked (every kept token took one draft position)."""
        return len(self.accepted)

    @property
    def full(self) -> bool:
        return len(self.accepted) >= self.limit


class Verifier:
    """Checks drafts for one generation. ``pick`` chooses a token from a row (the sampler);
    ``forcing`` compares the draft with forced runs; ``hook`` rewrites each row before the mask."""

    def __init__(
        self,
        *,
        pick: Pick,
        grammar: GrammarState | None,
        forcing: bool,
        stops: frozenset[int],
        hook: LogitsHook | None = None,
    ) -> None:
        self.pick = pick
        self.grammar = grammar
        self.forcing = forcing and grammar is not None
        self.stops = stops
        self.hook = hook

    def check(
        self, logits: torch.Tensor, draft: Sequence[int], *, limit: int, context: Sequence[int] = ()
    ) -> Verdict:
        """Check ``draft`` against ``logits`` (one row per draft position and one after it) and decide
        at most ``limit`` tokens. ``context`` (every id before the first row) is for the hook."""
        tally = _Tally(draft=draft, limit=limit)
        first = True  # the run before the pass was the first position's forced run
        while True:
            if not first and not self._follow_forced_run(tally):
                break
            first = False
            if tally.full or not self._check_position(tally, logits, context):
                break
        return self._verdict(tally)

    def _follow_forced_run(self, tally: _Tally) -> bool:
        """Where plain decoding appends a forced run, keep the draft while it agrees with the run;
        the rest of the run becomes the tail. False when the draft left the run (the check ends)."""
        if not self.forcing:
            return True
        assert self.grammar is not None
        run = accept_prefix(
            self.grammar, self.grammar.forced_tokens()[: tally.limit - tally.index], self.stops
        )
        same = common_prefix_length(run, tally.draft[tally.index :])
        tally.accepted += run[:same]
        tally.forced += len(run)
        if same < len(run):
            tally.tail = run[same:]
            return False
        return True

    def _check_position(self, tally: _Tally, logits: torch.Tensor, context: Sequence[int]) -> bool:
        """Pick a token at the current position: keep the draft token if it is the same (True: go on),
        else it is the pass's new token (False). A kept stop token also ends the check."""
        index = tally.index
        choice = self.pick(self._row(logits, index, tally.draft, context))
        if index == len(tally.draft) or choice != tally.draft[index]:
            tally.new_token = choice
            return False
        tally.accepted.append(choice)
        if self.grammar is not None:
            self.grammar.accept(choice)
        return choice not in self.stops

    def _row(
        self, logits: torch.Tensor, index: int, draft: Sequence[int], context: Sequence[int]
    ) -> torch.Tensor:
        row = logits[index]
        if self.hook is not None:
            row = self.hook([*context, *draft[:index]], row)
        return row if self.grammar is None else self.grammar.mask_logits(row)

    def _verdict(self, tally: _Tally) -> Verdict:
        """The pass's tokens; the picked token is accepted by the matcher (dropped if it refuses)."""
        new_token, refused = tally.new_token, False
        if new_token is not None and self.grammar is not None and not self.grammar.accept(new_token):
            new_token, refused = None, True
        return Verdict(
            accepted=tally.accepted,
            tail=tally.tail,
            new_token=new_token,
            forced=tally.forced,
            sampled=int(tally.new_token is not None),
            refused=refused,
        )
