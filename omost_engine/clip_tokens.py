"""Counting CLIP tokens without loading SDXL: only the model's first tokenizer (vocab and merges).

The region editor (``omost_engine.editing.set_text(count_tokens=...)``) refuses a sub-prompt that does not
fit one CLIP chunk. It needs the count that ``render.prompt_encoding.PromptEncoder.count_tokens`` makes,
but in the bot's process, where the SDXL weights may never load (they load on first render, or live on
another machine). ``ClipTokenCounter`` loads the tokenizer alone, on its first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class ClipTokenCounter:
    """CLIP tokens of ``text`` without bos/eos, from the tokenizer in ``source``
    (a folder or hub id; ``subfolder`` "tokenizer" for an SDXL model, None for a bare tokenizer folder).

    ``counter()`` loads it (blocking: call it off the event loop) and returns the count function; when the
    tokenizer cannot load (an offline machine without the model's files) the failure is logged once and it
    returns None, so that a caller skips the check.
    """

    def __init__(self, source: str, *, subfolder: str | None = "tokenizer") -> None:
        self.source = source
        self.subfolder = subfolder
        self._tokenizer: Any = None
        self._failed = False
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._tokenizer is None and not self._failed:
                from transformers import CLIPTokenizer

                try:
                    if self.subfolder:
                        self._tokenizer = CLIPTokenizer.from_pretrained(self.source, subfolder=self.subfolder)
                    else:
                        self._tokenizer = CLIPTokenizer.from_pretrained(self.source)
                except (OSError, ValueError):
                    self._failed = True
                    log.warning(
                        "no CLIP tokenizer in %s (%s): sub-prompt lengths are not checked in the editor",
                        self.source,
                        self.subfolder or ".",
                        exc_info=True,
                    )
            return self._tokenizer

    def counter(self) -> Callable[[str], int] | None:
        """The count function (text -> CLIP tokens without bos/eos), or None when no tokenizer loads."""
        tokenizer = self._load()
        if tokenizer is None:
            return None

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)

        return count
