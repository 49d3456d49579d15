"""Planning a pass: what the decode loop appends before the next forward pass, and what it drafts.

Before each pass the planner decides, from the budget left and the grammar's position:

* the end, without a pass: the grammar has terminated, the program is complete and only the end
  token may follow, or the budget has reached the reserve kept for closing the program (then the
  program is finished as it stands, see ``GrammarState.completion``);
* the forced run: tokens the grammar fully determines, appended without sampling and fed in the
  coming pass (accepted by the matcher here);
* the draft: prompt-lookup tokens cut to what the grammar accepts (the matcher is rolled back again;
  verification re-accepts what it keeps).

No pass crosses into the closing reserve: forced runs and drafts are cut at it, so where the program
gets closed does not depend on how passes fell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omost_engine.llm.decoding.commit import StopReason
from omost_engine.llm.decoding.grammar import GrammarState
from omost_engine.llm.decoding.prompt_lookup import PromptLookup

# Margin kept beside a minimal local call when reserving the end of the budget for closing.
CLOSING_MARGIN = 16


@dataclass(frozen=True, kw_only=True, slots=True)
class Ending:
    """Generation ends without another pass: commit ``closing`` (the program's ending, accepted by
    the matcher, counted as forced) and ``end`` (the end token, if one follows), then stop with
    ``reason``."""

    reason: StopReason
    closing: tuple[int, ...] = ()
    end: tuple[int, ...] = ()

    @property
    def tokens(self) -> list[int]:
        return [*self.closing, *self.end]


@dataclass(frozen=True, kw_only=True, slots=True)
class ForcedRun:
    """Tokens the grammar determines next (accepted by the matcher; to commit and feed in the coming
    pass), and how many tokens the pass may add after them (``limit``; none left: no pass now)."""

    tokens: tuple[int, ...]
    limit: int


def accept_prefix(grammar: GrammarState, tokens: Sequence[int], stops: frozenset[int]) -> list[int]:
    """Feed ``tokens`` to the matcher until one is refused; return the accepted prefix (kept accepted).
    Stops after a stop token, since nothing follows it."""
    kept: list[int] = []
    for token in tokens:
        if not grammar.accept(token):
            break
        kept.append(int(token))
        if token in stops:
            break
    return kept


def only_stop_allowed(grammar: GrammarState, stops: frozenset[int]) -> set[int]:
    """The allowed tokens when the program is complete and only stop tokens may follow, else empty."""
    if not grammar.completed:
        return set()
    allowed = grammar.allowed_tokens()
    return allowed if allowed <= stops else set()


class Planner:
    """Decides, before each pass, the forced run and the draft (or the end, without a pass).

    ``stop_ids`` are the configured stop tokens in order of preference (the closing ending appends
    the first one allowed); ``stops`` also holds the matcher's own. ``forcing`` appends forced runs
    (off without a grammar and while a logits hook must see every position)."""

    def __init__(
        self,
        *,
        grammar: GrammarState | None,
        lookup: PromptLookup | None,
        draft_tokens: int,
        forcing: bool,
        stop_ids: Sequence[int],
        stops: frozenset[int],
    ) -> None:
        self.grammar = grammar
        self.lookup = lookup
        self.draft_tokens = draft_tokens
        self.forcing = forcing and grammar is not None
        self.stop_ids = tuple(stop_ids)
        self.stops = stops
        # The end of the budget kept for closing the program: a minimal local call and a margin.
        self.reserve = grammar.factory.call_tokens + CLOSING_MARGIN if grammar is not None else 0

    def before_pass(self, budget: int) -> Ending | ForcedRun:
        """With ``budget`` new tokens left: the end, or the forced run and the room left after it."""
        if budget <= 0:
            return Ending(reason="length")
        grammar = self.grammar
        if grammar is None:
            return ForcedRun(tokens=(), limit=budget)
        if grammar.terminated:
            return Ending(reason="stop")
        limit = budget - self.reserve
        if limit <= 0:
            closing = grammar.completion()
            if closing is not None:
                return self._closing(closing[:budget], budget)
            limit = 1  # in the middle of a character: one more token, then close
        forced = accept_prefix(grammar, grammar.forced_tokens()[:limit], self.stops) if self.forcing else []
        return ForcedRun(tokens=tuple(forced), limit=limit - len(forced))

    def end_without_pass(self) -> Ending | None:
        """The program is complete and only one end token may follow: it needs no pass."""
        if self.grammar is None:
            return None
        allowed = only_stop_allowed(self.grammar, self.stops)
        return Ending(reason="stop", end=tuple(allowed)) if len(allowed) == 1 else None

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` (and the draft length) lookup tokens, cut to what the grammar accepts; the
        matcher is left where it was."""
        if self.lookup is None:
            return []
        draft = self.lookup.draft(min(self.draft_tokens, limit))
        if self.grammar is not None and draft:
            draft = accept_prefix(self.grammar, draft, self.stops)
            self.grammar.rollback(len(draft))
        return draft

    def _closing(self, ending: list[int], budget: int) -> Ending:
        """The program's ending (accepted by the matcher) and the first allowed end token after it,
        which is left out when the ending fills the budget."""
        assert self.grammar is not None
        ending = accept_prefix(self.grammar, ending, self.stops)
        allowed = only_stop_allowed(self.grammar, self.stops)
        end = [t for t in (*self.stop_ids, *sorted(allowed)) if t in allowed][:1]
        if not end or len(ending) >= budget:
            return Ending(reason="length", closing=tuple(ending))
        return Ending(reason="stop", closing=tuple(ending), end=tuple(end))
