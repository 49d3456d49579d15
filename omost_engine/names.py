"""Fuzzy resolution of location / offset / area / colour names, exactly as the original does it.

The original lowercases the input and takes ``difflib.get_close_matches(n=1, cutoff=0.5)`` over
the table keys in table order; it prints corrections to stdout. We return them as warnings instead,
so the bot can show the user that "on the upper left" was read as "on the left".

The answer is difflib's, computed faster: difflib scores every key with ``SequenceMatcher.ratio``
(about 2 ms for a near-miss colour). Its ``quick_ratio`` (shared characters) is an upper bound of
``ratio``, so we get it for all keys at once with numpy, then score keys best bound first with the
same ``SequenceMatcher.ratio`` and stop once no bound can beat the best score. Ties go to the
larger key, as in difflib (``heapq.nlargest`` over (score, key) pairs).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from omost_engine.errors import OmostError, quote
from omost_engine.tables import COLORS, TABLES

CUTOFF = 0.5

# What a value of each parameter is called in messages.
_NOUNS = {"HTML_web_color_name": "HTML colour name"}
# Colour examples named in the error message (the full list of 149 is in ``OmostError.allowed``).
_COLOR_EXAMPLES = ("white", "black", "red", "darkslategray", "skyblue", "forestgreen", "navyblue")


class Resolved(NamedTuple):
    name: str  # the table key
    warning: str | None  # set when the input was corrected by more than case


class _KeyIndex(NamedTuple):
    """Per-table character counts of the keys, for the quick_ratio bound."""

    keys: tuple[str, ...]
    alphabet: Mapping[str, int]
    counts: np.ndarray  # (keys, alphabet) int
    lengths: np.ndarray  # (keys,)


def _key_index(table: Mapping[str, Any]) -> _KeyIndex:
    keys = tuple(table)
    alphabet = {c: i for i, c in enumerate(sorted({c for k in keys for c in k}))}
    counts = np.zeros((len(keys), len(alphabet)), dtype=np.int64)
    for row, key in enumerate(keys):
        for c in key:
            counts[row, alphabet[c]] += 1
    lengths = np.array([len(k) for k in keys], dtype=np.int64)
    counts.setflags(write=False)
    lengths.setflags(write=False)
    return _KeyIndex(keys, MappingProxyType(alphabet), counts, lengths)


# Built once at import for the four tables (read-only afterwards).
_INDEXES = MappingProxyType({id(table): _key_index(table) for table in TABLES.values()})


def closest_key(word: str, table: Mapping[str, Any]) -> str | None:
    """``difflib.get_close_matches(word, list(table), n=1, cutoff=0.5)``, first result or None."""
    index = _INDEXES.get(id(table))
    if index is None:
        matches = difflib.get_close_matches(word, list(table), n=1, cutoff=CUTOFF)
        return matches[0] if matches else None
    letters = np.zeros(len(index.alphabet), dtype=np.int64)
    for c in word:
        position = index.alphabet.get(c)
        if position is not None:
            letters[position] += 1
    bounds = 2.0 * np.minimum(index.counts, letters).sum(axis=1) / (index.lengths + len(word))
    best: tuple[float, str] | None = None
    for row in np.argsort(-bounds, kind="stable"):
        bound = float(bounds[row])
        if bound < CUTOFF or (best is not None and bound < best[0]):
            break
        key = index.keys[row]
        # Same argument order as difflib: a = candidate, b = word.
        score = difflib.SequenceMatcher(None, key, word).ratio()
        if score >= CUTOFF and (best is None or (score, key) > best):
            best = (score, key)
    return None if best is None else best[1]


def describe_allowed(parameter: str, table: Mapping[str, Any]) -> str:
    if table is COLORS:
        return f"one of the {len(COLORS)} HTML colour names, e.g. " + ", ".join(_COLOR_EXAMPLES)
    return "one of: " + ", ".join(f"'{k}'" for k in table)


def resolve(value: Any, table: Mapping[str, Any], *, parameter: str) -> Resolved:
    """Map ``value`` to a key of ``table`` the way the original's ``closest_name`` does.

    Raises OmostError when ``value`` is not a string or nothing is close enough (ratio < 0.5).
    """
    if not isinstance(value, str):
        raise OmostError(
            f"{parameter} must be a string, got {quote(value)}; allowed: {describe_allowed(parameter, table)}",
            parameter=parameter,
            value=value,
            allowed=list(table),
        )
    lowered = value.lower()
    if lowered in table:  # an exact key always wins (ratio 1.0 is unique to identical strings)
        return Resolved(lowered, None)
    # difflib's ratio is 2*M/(len(a)+len(b)) with M <= the shorter length, so an input more than
    # three times longer than every key can never reach 0.5: skip the quadratic matching for it.
    longest = max(len(k) for k in table)
    match = closest_key(lowered, table) if len(lowered) <= 3 * longest else None
    if match is None:
        raise OmostError(
            f"{parameter} {quote(lowered)} is not a known {_NOUNS.get(parameter, parameter)} and nothing is close to it; "
            f"allowed: {describe_allowed(parameter, table)}",
            parameter=parameter,
            value=value,
            allowed=list(table),
        )
    return Resolved(match, f"{parameter} {quote(lowered)} -> '{match}'")
