"""Prompt-lookup drafting: propose the next tokens by copying what followed the same context earlier
in the conversation (the system prompt, previous programs, the new request, the reply so far).

An edit turn re-writes most of the previous program, so once the reply is aligned with it, long
drafts come true. Two rules keep the alignment:

* the match with the longest common context wins (compared backwards from the last token, up to
  ``max_context`` tokens), so ``location='`` in the third call of the reply is matched with the third
  call of the previous program (their comment lines differ) and not with the first;
* a draft that was fully accepted continues from where it left off in the source (a cursor), so a
  long copied stretch needs no search at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PromptLookup:
    """Drafts from one token sequence that grows as tokens are accepted.

    ``extend`` appends accepted tokens; ``draft`` proposes up to ``max_tokens`` next tokens.
    """

    def __init__(
        self,
        context: Sequence[int],
        *,
        min_match: int = 1,
        max_context: int = 64,
        stop_ids: Sequence[int] = (),
    ) -> None:
        self._buffer = np.zeros(max(1024, 2 * len(context) + 256), dtype=np.int64)
        self._length = 0
        self.min_match = min_match
        self.max_context = max_context
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self._cursor: int | None = None  # source position that continues the sequence, if aligned
        self.extend(context)

    @property
    def tokens(self) -> np.ndarray:
        return self._buffer[: self._length]

    def extend(self, token_ids: Sequence[int]) -> None:
        count = len(token_ids)
        if not count:
            return
        if self._length + count > len(self._buffer):
            grown = np.zeros(2 * (self._length + count), dtype=np.int64)
            grown[: self._length] = self._buffer[: self._length]
            self._buffer = grown
        start = self._length
        self._buffer[start : start + count] = np.asarray(token_ids, dtype=np.int64)
        self._length += count
        # The cursor survives while the new tokens are exactly what the source says next.
        if self._cursor is not None:
            cursor = self._cursor
            source = self._buffer[cursor : cursor + count]
            if cursor + count <= start and np.array_equal(source, self._buffer[start : start + count]):
                self._cursor = cursor + count
            else:
                self._cursor = None

    def _search(self) -> int | None:
        """Source position whose preceding tokens best match the end of the sequence."""
        seq = self.tokens
        last = len(seq) - 1
        if last < 1:
            return None
        # Candidates j: seq[j] equals the last token and something follows j (j < last).
        survivors = np.flatnonzero(seq[:last] == seq[last])
        if survivors.size == 0:
            return None
        matched = 1
        while matched < self.max_context:
            back = survivors - matched
            back = back[back >= 0]
            if back.size == 0:
                break
            keep = back[seq[back] == seq[last - matched]] + matched
            if keep.size == 0:
                break
            survivors = keep
            matched += 1
        if matched < self.min_match:
            return None
        # Ties: the most recent occurrence; its continuation is the freshest text.
        return int(survivors[-1]) + 1

    def draft(self, max_tokens: int) -> list[int]:
        """Up to ``max_tokens`` proposed next tokens; cut after the first stop token (a reply that
        copies an end-of-turn token from the history ends there, nothing after it can follow)."""
        if max_tokens <= 0:
            return []
        source = self._cursor if self._cursor is not None and self._cursor < self._length else None
        if source is None:
            source = self._search()
            if source is None:
                return []
            self._cursor = source
        proposal: list[int] = self._buffer[source : min(source + max_tokens, self._length)].tolist()
        for index, token in enumerate(proposal):
            if token in self.stop_ids:
                return proposal[: index + 1]
        return proposal
