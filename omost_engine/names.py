"""Fuzzy resolution of location / offset / area / colour names, exactly as the original does it.

The original lowercases the input and takes ``difflib.get_close_matches(n=1, cutoff=0.5)`` over
the table keys in table order; it prints corrections to stdout. We return them as warnings instead,
so the bot can show the user that "on the upper left" was read as "on the left".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, NamedTuple

from omost_engine.errors import OmostError
from omost_engine.tables import COLORS

# How much of a bad value an error message quotes.
_QUOTE_CHARS = 60
# Colour examples named in the error message (the full list of 149 is in ``OmostError.allowed``).
_COLOR_EXAMPLES = ("white", "black", "red", "darkslategray", "skyblue", "forestgreen", "navyblue")


class Resolved(NamedTuple):
    name: str  # the table key
    warning: str | None  # set when the input was corrected by more than case


def quote(value: Any) -> str:
    """``repr`` of a value, shortened for an error message."""
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


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
    matches = difflib.get_close_matches(lowered, list(table), n=1, cutoff=0.5) if len(lowered) <= 3 * longest else []
    if not matches:
        raise OmostError(
            f"{parameter} {quote(lowered)} is not a known {parameter} and nothing is close to it; "
            f"allowed: {describe_allowed(parameter, table)}",
            parameter=parameter,
            value=value,
            allowed=list(table),
        )
    match = matches[0]
    return Resolved(match, f"{parameter} {quote(lowered)} -> '{match}'")
