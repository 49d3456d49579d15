"""Regions appearing while the reply streams: interpret every completed canvas call so far.

The safe interpreter does the work (``reply.extract_code`` + ``interpreter.interpret_partial``); this
class decides when a new call may have completed (a closing parenthesis, then a line end) so the
program is not re-read at every token, and keeps the regions found so far (they only ever grow).
"""

from __future__ import annotations

from omost_engine.conditions import Condition
from omost_engine.interpreter import interpret_partial
from omost_engine.reply import extract_code


class IncrementalCanvas:
    """Feed it the reply piece by piece; ``conditions`` holds the regions of the calls completed so far."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._pending_close = False  # a ")" arrived since the last interpretation
        self.conditions: tuple[Condition, ...] = ()
        self.interpretations = 0

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, piece: str) -> bool:
        """Add a piece of the reply; True when the regions changed."""
        self._parts.append(piece)
        if ")" in piece:
            self._pending_close = True
        if not (self._pending_close and "\n" in piece):
            return False
        self._pending_close = False
        return self._interpret(self.text)

    def finish(self) -> bool:
        """Interpret whatever is left at the end of the reply (a last call without a newline)."""
        return self._interpret(self.text)

    def _interpret(self, text: str) -> bool:
        self.interpretations += 1
        code = extract_code(text)
        if code is None:
            return False
        found = tuple(interpret_partial(code))
        # Never take regions back while the reply streams (a half-written program may read worse).
        if found == self.conditions or len(found) < len(self.conditions):
            return False
        self.conditions = found
        return True
