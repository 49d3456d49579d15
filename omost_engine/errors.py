"""The one error type for everything a user (or the LLM on their behalf) can get wrong."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

# How much of a bad value an error message quotes.
QUOTE_CHARS = 60
# Ints longer than this are described by their size, never printed: printing an int costs time
# quadratic in its digits, and past 4300 digits Python refuses (ValueError) altogether.
_PRINTABLE_INT_BITS = 256


class _ShortRepr(reprlib.Repr):
    """``reprlib.Repr`` that never prints a huge int (its own ``repr_int`` calls ``repr`` first)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > _PRINTABLE_INT_BITS:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


def quote(value: Any) -> str:
    """``repr`` of a value, shortened for an error message; safe for any value.

    ``reprlib`` stops at a few items and two levels, so a huge or deeply nested value made by a
    hostile program costs nothing to quote (plain ``repr`` could recurse too deep), and a huge
    int is named by its size instead of printed.
    """
    short = _ShortRepr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict = 2, 4, 4, 4
    short.maxstring, short.maxother, short.maxlong = QUOTE_CHARS, QUOTE_CHARS, QUOTE_CHARS
    text = short.repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


class OmostError(Exception):
    """A user-facing error: one clear sentence, naming what was wrong and what is allowed.

    ``str(error)`` is the message shown to users. The structured fields let callers (the bot,
    the CLI) format it differently without parsing the text.
    """

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        value: Any = None,
        allowed: str | Iterable[str] | None = None,
        line: int | None = None,
    ) -> None:
        if allowed is not None and not isinstance(allowed, str):
            allowed = ", ".join(a if isinstance(a, str) else quote(a) for a in allowed)
        self.parameter = parameter
        self.value = value
        self.allowed = allowed
        self.line = line
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.message
        if self.line is not None:
            text = f"line {self.line}: {text}"
        return text


class CancelledError(Exception):
    """Raised inside engine work when its CancelToken was set; not a user error."""
