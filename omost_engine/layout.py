"""The layout: what a canvas program produces, what the renderer consumes, and the file users edit.

On disk it is JSON, compatible both ways with ComfyUI_omost: a bare list of
``{"rect": [top, bottom, left, right], "prefixes": [...], "suffixes": [...], "color": [r, g, b]}``
(global first, then far to near) loads here, and ``to_comfyui()`` writes one. The project's own
file wraps that list with a format name, a version, the warnings and the meta needed to reproduce
an image (seed, size, models, sampler parameters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from omost_engine.conditions import GRID, Condition
from omost_engine.errors import OmostError
from omost_engine.names import quote

FORMAT = "omost-bot-layout"
VERSION = 1

# Limits shared by the canvas and the loader, so that every layout a program makes loads back.
MAX_LAYOUT_BYTES = 256 * 1024
MAX_REGIONS = 64  # local regions, not counting the global condition
MAX_TEXTS = 64  # prefixes (or suffixes) of one condition
MAX_TEXT_CHARS = 2000  # one sub-prompt; the original's are under 75 CLIP tokens
MAX_WARNINGS = 1000  # a canvas makes at most 4 per region (name corrections) plus 2

FULL_RECT = (0, GRID, 0, GRID)
_NUMBER_LIST = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")
DEFAULT_COLOR = (255, 255, 255)  # for a loaded condition without "color" (it only tints the sketch)


@dataclass
class Layout:
    conditions: list[Condition]  # global first, then far -> near
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "conditions": self.to_comfyui(),
            "warnings": list(self.warnings),
            "meta": dict(self.meta),
        }

    def to_comfyui(self) -> list[dict[str, Any]]:
        """The bare list ComfyUI_omost's "Load Canvas Conditioning" node reads."""
        return [c.to_json() for c in self.conditions]

    def dumps(self) -> str:
        """Indented JSON for hand editing, with number lists (rect, color) kept on one line."""
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=1)
        # Raw newlines only occur between JSON tokens (in strings they are escaped), so this
        # touches structure only.
        return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", text)

    def with_meta(self, **meta: Any) -> Layout:
        return replace(self, warnings=list(self.warnings), meta={**self.meta, **meta})

    @property
    def global_condition(self) -> Condition | None:
        """The first condition when it covers the whole grid (always, for a validated layout)."""
        return self.conditions[0] if self.conditions and self.conditions[0].rect == FULL_RECT else None

    @property
    def regions(self) -> list[Condition]:
        """The local conditions (everything after the global one)."""
        return self.conditions[1:] if self.global_condition is not None else list(self.conditions)

    def sketch(self) -> np.ndarray:
        """The original's ``initial_latent``: a 90x90x3 uint8 colour sketch.

        Fill with the global colour, then paint each region far to near as 0.7*colour + 0.3*below
        (numpy's own mixed float64/float32 arithmetic, as the original) and truncate to uint8.
        A partial layout without a global condition (a reply still streaming) starts from black.
        """
        glob = self.global_condition
        fill = np.array(glob.color if glob is not None else (0, 0, 0), dtype=np.uint8)
        img = np.zeros((GRID, GRID, 3), dtype=np.float32) + fill
        for cond in self.regions:
            top, bottom, left, right = cond.rect
            color = np.array(cond.color, dtype=np.uint8).reshape(1, 1, 3)
            img[top:bottom, left:right] = 0.7 * color + 0.3 * img[top:bottom, left:right]
        return np.clip(img, 0, 255).astype(np.uint8)

    @classmethod
    def loads(cls, data: bytes | str) -> Layout:
        """Parse and validate a layout file: the wrapped form or a bare ComfyUI list."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_LAYOUT_BYTES:
            raise OmostError(
                f"the layout file is too large: {len(raw)} bytes; allowed: at most {MAX_LAYOUT_BYTES} bytes",
                parameter="layout",
                value=len(raw),
                allowed=f"at most {MAX_LAYOUT_BYTES} bytes",
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise OmostError(
                f"the layout file is not UTF-8 text (bad byte at offset {exc.start}); allowed: a UTF-8 JSON file",
                parameter="layout",
                value=exc.start,
                allowed="UTF-8 JSON",
            ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OmostError(
                f"the layout file is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                "allowed: a JSON list of conditions or an omost-bot layout object",
                parameter="layout",
                value=exc.msg,
                allowed="JSON",
            ) from None
        except RecursionError:
            raise OmostError(
                "the layout file nests JSON too deeply; allowed: a list of flat condition objects",
                parameter="layout",
                allowed="JSON",
            ) from None
        return cls.from_json(doc)

    @classmethod
    def from_json(cls, doc: Any) -> Layout:
        """Validate an already-decoded layout (wrapped dict or bare list)."""
        warnings: list[str] = []
        meta: dict[str, Any] = {}
        if isinstance(doc, dict):
            fmt, version = doc.get("format"), doc.get("version")
            if fmt != FORMAT:
                raise _bad("format", fmt, f"'{FORMAT}' (or a bare ComfyUI_omost list)")
            if type(version) is not int or version < 1:
                raise _bad("version", version, f"the integer {VERSION}")
            if version > VERSION:
                raise _bad("version", version, f"{VERSION} (this file was made by a newer omost-bot)")
            unknown = sorted(set(doc) - {"format", "version", "conditions", "warnings", "meta"})
            if unknown:
                raise _bad("key", unknown[0], "format, version, conditions, warnings, meta")
            items = doc.get("conditions")
            warnings = _texts(doc.get("warnings", []), "warnings", MAX_WARNINGS)
            meta = doc.get("meta", {})
            if not isinstance(meta, dict):
                raise _bad("meta", meta, "a JSON object")
            try:
                meta_text = json.dumps(meta, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError, RecursionError):
                raise _bad("meta", "...", "plain JSON values (no NaN or Infinity)") from None
            if not utf8_safe(meta_text):
                raise _bad("meta", "...", "text that can be written as UTF-8 (no lone surrogates)")
        elif isinstance(doc, list):
            items = doc
        else:
            raise _bad("layout", doc, "a JSON list of conditions or an object with format, version, conditions")
        if not isinstance(items, list) or not items:
            raise _bad("conditions", items, "a non-empty list: the global condition, then the regions")
        if len(items) > MAX_REGIONS + 1:
            raise OmostError(
                f"the layout has too many conditions: {len(items)}; allowed: at most {MAX_REGIONS + 1} "
                f"(the global one plus {MAX_REGIONS} regions)",
                parameter="conditions",
                value=len(items),
                allowed=f"at most {MAX_REGIONS + 1}",
            )
        conditions = [_condition(item, i, warnings) for i, item in enumerate(items)]
        if conditions[0].rect != FULL_RECT:
            raise OmostError(
                f"conditions[0].rect is {list(conditions[0].rect)}, so the layout has no global condition; "
                f"allowed: the first condition must cover the whole grid, rect {list(FULL_RECT)}",
                parameter="conditions[0].rect",
                value=list(conditions[0].rect),
                allowed=str(list(FULL_RECT)),
            )
        return cls(conditions=conditions, warnings=warnings, meta=meta)


def utf8_safe(text: str) -> bool:
    """False for strings that cannot be written as UTF-8 (lone surrogates, e.g. from a JSON "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad(parameter: str, value: Any, allowed: str) -> OmostError:
    return OmostError(
        f"{parameter} {quote(value)} is not valid in a layout file; allowed: {allowed}",
        parameter=parameter,
        value=value,
        allowed=allowed,
    )


def _texts(value: Any, parameter: str, max_items: int) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _bad(parameter, value, "a list of strings")
    if len(value) > max_items:
        raise _bad(parameter, f"{len(value)} items", f"at most {max_items} items")
    for s in value:
        if len(s) > MAX_TEXT_CHARS:
            raise _bad(parameter, s, f"strings of at most {MAX_TEXT_CHARS} characters")
        if not utf8_safe(s):
            raise _bad(parameter, s, "text that can be written as UTF-8 (no lone surrogates)")
    return list(value)


def _ints(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(type(v) is int for v in value)


def _condition(item: Any, index: int, warnings: list[str]) -> Condition:
    where = f"conditions[{index}]"
    if not isinstance(item, dict):
        raise _bad(where, item, "an object with rect, prefixes, suffixes, color")
    missing = [k for k in ("rect", "prefixes", "suffixes") if k not in item]
    if missing:
        raise _bad(f"{where}.{missing[0]}", None, "rect, prefixes and suffixes are required")
    rect = item["rect"]
    if not _ints(rect, 4):
        raise _bad(f"{where}.rect", rect, "4 integers [top, bottom, left, right] on the 90x90 grid")
    top, bottom, left, right = rect
    if not (0 <= top < bottom <= GRID and 0 <= left < right <= GRID):
        raise _bad(
            f"{where}.rect", rect, f"0 <= top < bottom <= {GRID} and 0 <= left < right <= {GRID} (a non-empty box)"
        )
    prefixes = _texts(item["prefixes"], f"{where}.prefixes", MAX_TEXTS)
    suffixes = _texts(item["suffixes"], f"{where}.suffixes", MAX_TEXTS)
    if not prefixes and not suffixes:
        raise _bad(f"{where}.prefixes", prefixes, "at least one prefix or suffix string")
    if "color" not in item:
        color = DEFAULT_COLOR
        warnings.append(f"{where} has no color; using white {list(DEFAULT_COLOR)} for the sketch")
    else:
        color = item["color"]
        if not _ints(color, 3) or not all(0 <= c <= 255 for c in color):
            raise _bad(f"{where}.color", color, "3 integers [r, g, b], each 0-255")
    return Condition(rect=(top, bottom, left, right), prefixes=tuple(prefixes), suffixes=tuple(suffixes), color=tuple(color))
