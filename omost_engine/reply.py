"""From an LLM reply to a Layout: find the program, run it safely, process the canvas.

The original takes the first block fenced exactly as ```` ```python\\n ````, requires the literal
``canvas = Canvas()`` and ``exec``s it. We are tolerant where it was needlessly strict (CRLF,
```` ```py ````, ```` ```python3 ````, spaces after the tag, a reply that is only code, no spaces in
``canvas=Canvas()``) and run the code with the safe interpreter instead.
"""

from __future__ import annotations

import re

from omost_engine.errors import OmostError
from omost_engine.interpreter import DEFAULT_LIMITS, Limits, interpret
from omost_engine.layout import Layout

# An opening fence tagged python/py/python3 (any case, spaces allowed around the tag); the body runs
# to a closing fence at the start of a line, or to the end of the text while a reply is streaming.
_PYTHON_BLOCK = re.compile(
    r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL | re.IGNORECASE
)
_BARE_BLOCK = re.compile(r"```[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_CANVAS_CALL = re.compile(r"\bCanvas\s*\(\s*\)")


def extract_code(text: str) -> str | None:
    """The program in an LLM reply, or None when there is none.

    The first python-tagged block that makes a Canvas wins (blocks with other tags are ignored,
    as in the original, and so is an earlier python snippet without ``Canvas()``); failing that,
    an untagged block that makes a Canvas; failing that, the whole reply when it has no fence at
    all and makes a Canvas (a model that forgot the fence).
    """
    text = text.replace("\r\n", "\n")
    blocks = [m.group(1) for m in _PYTHON_BLOCK.finditer(text)]
    if blocks:
        # The first python block that makes a canvas; a reply whose python blocks make none gets
        # its first one (and the error that goes with it).
        return next((b for b in blocks if _CANVAS_CALL.search(b)), blocks[0])
    for bare in _BARE_BLOCK.finditer(text):
        if _CANVAS_CALL.search(bare.group(1)):
            return bare.group(1)
    if "```" not in text and _CANVAS_CALL.search(text):
        return text.strip("\n")
    return None


def parse_reply(text: str, *, limits: Limits = DEFAULT_LIMITS) -> Layout:
    """The Layout of the first canvas program in ``text``; OmostError if there is none or it is invalid."""
    code = extract_code(text)
    if code is None:
        raise OmostError(
            "the reply contains no canvas program; allowed: a ```python code block that starts with "
            "canvas = Canvas()",
            parameter="reply",
            value=text[:60],
            allowed="a ```python block with a canvas program",
        )
    return interpret(code, limits=limits).process()
