"""The one error type for everything a user (or the LLM on their behalf) can get wrong."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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
            allowed = ", ".join(str(a) for a in allowed)
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
