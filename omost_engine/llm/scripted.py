"""A backend that replays given replies token by token: for tests, demos and the bot without a GPU."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from omost_engine.llm.backend import Backend, Generation, Message, OnText, StopReason
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

# Pseudo-tokens: a run of word characters with its leading space, or one other character.
_TOKEN = re.compile(r" ?\w+|\s|.", re.DOTALL)


def split_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


class ScriptedBackend(Backend):
    """Replies with ``replies`` in order (the last one repeats), one pseudo-token at a time.

    ``delay`` seconds pass between tokens (waiting on the cancel token, so a cancel is immediate);
    ``max_new_tokens`` cuts a reply as a model would.
    """

    def __init__(
        self,
        replies: Sequence[str],
        *,
        name: str = "scripted",
        delay: float = 0.0,
        context_tokens: int = 8192,
    ) -> None:
        if not replies:
            raise ValueError("ScriptedBackend needs at least one reply")
        self.replies = list(replies)
        self.name = name
        self.delay = delay
        self.context_tokens = context_tokens
        self.calls: list[list[Message]] = []  # the messages of every call, for tests to inspect
        self._lock = threading.Lock()

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return sum(len(split_tokens(m["content"])) + 4 for m in messages)

    def generate(
        self,
        messages: Sequence[Message],
        params: LLMParams,
        *,
        on_text: OnText | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation:
        cancel = cancel or CancelToken()
        with self._lock:
            reply = self.replies[min(len(self.calls), len(self.replies) - 1)]
            self.calls.append(list(messages))
        tokens = split_tokens(reply)
        emitted: list[str] = []
        for token in tokens[: params.max_new_tokens]:
            if cancel.cancelled or (self.delay and cancel.wait(self.delay)):
                return Generation(
                    text="".join(emitted),
                    tokens=len(emitted),
                    stop_reason="cancelled",
                    forward_passes=len(emitted),
                )
            emitted.append(token)
            if on_text is not None:
                on_text(token, len(emitted))
        stop: StopReason = "length" if len(tokens) > params.max_new_tokens else "end"
        return Generation(
            text="".join(emitted), tokens=len(emitted), stop_reason=stop, forward_passes=len(emitted)
        )
