"""The virtual ``Canvas`` the Omost LLM programs against, with the original's semantics.

Differences from the original, all decided for users and documented in docs/canvas.md:

* every fuzzy name correction is kept as a warning instead of being printed;
* the global description may come after local ones: every region gets the (final) global
  description as its first prefix, with a warning; setting it twice keeps the last, with a warning;
* a program without ``set_global_description`` is an OmostError, not a TypeError;
* every user error is one OmostError naming the parameter, the value and what is allowed;
* size limits (regions, sub-prompts, characters) so that any layout made here loads back.

For the programs the published models write (global first, set once) the conditions and the
sketch are identical to the original's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omost_engine.conditions import GRID, Condition
from omost_engine.errors import OmostError, quote
from omost_engine.layout import (
    FULL_RECT,
    MAX_LAYOUT_BYTES,
    MAX_REGIONS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
    Layout,
    utf8_safe,
)
from omost_engine.names import resolve
from omost_engine.tables import AREAS, COLORS, LOCATIONS, OFFSETS

# Parameter names in the original's order (positional calls bind in this order).
GLOBAL_PARAMS = ("description", "detailed_descriptions", "tags", "HTML_web_color_name")
LOCAL_PARAMS = (
    "location",
    "offset",
    "area",
    "distance_to_viewer",
    "description",
    "detailed_descriptions",
    "tags",
    "atmosphere",
    "style",
    "quality_meta",
    "HTML_web_color_name",
)
# Work units (see Canvas.work): a fuzzy name match, and characters of text per unit.
FUZZY_MATCH_WORK = 100
TEXT_CHARS_PER_WORK = 100
# The single-string suffixes of a local description, in suffix order after the detailed ones.
_LOCAL_TEXT_PARAMS = ("tags", "atmosphere", "style", "quality_meta")


def safe_str(text: str) -> str:
    """The original's normalisation: strip commas, periods and spaces at both ends, append one period."""
    return text.strip(",. ") + "."


def box(location: str, offset: str, area: str) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a resolved (location, offset, area), clamped to the grid."""
    x, y = LOCATIONS[location]
    dx, dy = OFFSETS[offset]
    w, h = AREAS[area]
    cx, cy = x + dx, y + dy
    rect = (cy - h // 2, cy + h // 2, cx - w // 2, cx + w // 2)
    top, bottom, left, right = (min(max(v, 0), GRID) for v in rect)
    return top, bottom, left, right


@dataclass(frozen=True)
class Region:
    """One ``add_local_description`` call, validated."""

    rect: tuple[int, int, int, int]
    distance: float
    color: tuple[int, int, int]
    description: str  # after safe_str; the global description is prepended at process()
    suffixes: tuple[str, ...]
    index: int  # insertion order
    # The resolved names and the call's own texts, so an editor can show and rewrite the call
    # (omost_engine/editing.py); they do not change the conditions.
    names: tuple[str, str, str, str] = ("", "", "", "")  # location, offset, area, colour
    texts: tuple[Any, ...] = ()  # description, detailed_descriptions, tags, atmosphere, style, quality_meta


def _text(value: Any, parameter: str, who: str) -> str:
    if not isinstance(value, str):
        raise OmostError(
            f"{parameter} of {who} must be a string, got {quote(value)}; allowed: a string",
            parameter=parameter,
            value=value,
            allowed="a string",
        )
    if len(value) > MAX_TEXT_CHARS:
        raise OmostError(
            f"{parameter} of {who} is {len(value)} characters long; allowed: at most {MAX_TEXT_CHARS}",
            parameter=parameter,
            value=value[:40],
            allowed=f"a string of at most {MAX_TEXT_CHARS} characters",
        )
    if not utf8_safe(value):
        raise OmostError(
            f"{parameter} of {who} holds characters that cannot be written as UTF-8 ({quote(value)}); "
            "allowed: ordinary text",
            parameter=parameter,
            value=value,
            allowed="text without lone surrogates",
        )
    return value


def _texts(value: Any, parameter: str, who: str) -> list[str]:
    # A list only, as the original (a tuple is rejected there too, golden 41).
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise OmostError(
            f"{parameter} of {who} must be a list of strings, got {quote(value)}; allowed: a list of strings",
            parameter=parameter,
            value=value,
            allowed="a list of strings",
        )
    if len(value) > MAX_TEXTS - 5:  # room for the local's tags, atmosphere, style, quality_meta
        raise OmostError(
            f"{parameter} of {who} has {len(value)} items; allowed: at most {MAX_TEXTS - 5}",
            parameter=parameter,
            value=len(value),
            allowed=f"at most {MAX_TEXTS - 5} strings",
        )
    for s in value:
        _text(s, parameter, who)
    return value


def _distance(value: Any, who: str) -> float:
    # As the original: any int/float (bool included, True reads as 1) that is > 0; inf is allowed.
    if (
        not isinstance(value, int | float)
        or (isinstance(value, float) and math.isnan(value))
        or not value > 0
    ):
        raise OmostError(
            f"distance_to_viewer of {who} must be a positive number, got {quote(value)}; "
            "allowed: a number > 0 (only the order matters: larger is farther)",
            parameter="distance_to_viewer",
            value=value,
            allowed="a number > 0",
        )
    return value


class Canvas:
    """The object a canvas program builds. Host code may also call the methods directly."""

    def __init__(self, *, max_regions: int = MAX_REGIONS) -> None:
        self.max_regions = max_regions
        self.regions: list[Region] = []
        self.warnings: list[str] = []
        self.global_prefix: str | None = None
        self.global_suffixes: tuple[str, ...] = ()
        self.global_color: tuple[int, int, int] | None = None
        self.global_color_name: str | None = None
        # The last set_global_description call's own texts: description, detailed_descriptions, tags.
        self.global_texts: tuple[Any, ...] = ()
        self.global_calls = 0
        # Rough cost of the calls so far (text handled, fuzzy matches), for callers that budget work.
        self.work = 0

    def __repr__(self) -> str:  # shown in error messages: no object address
        return f"<canvas with {len(self.regions)} regions>"

    def set_global_description(
        self, description: str, detailed_descriptions: list[str], tags: str, HTML_web_color_name: str
    ) -> None:
        who = "the global description"
        # The original's order: description, detailed_descriptions, tags, then the colour name.
        description = _text(description, "description", who)
        detailed = _texts(detailed_descriptions, "detailed_descriptions", who)
        tags = _text(tags, "tags", who)
        color = self._resolve(HTML_web_color_name, COLORS, "HTML_web_color_name")
        self.work += (len(description) + len(tags) + sum(map(len, detailed))) // TEXT_CHARS_PER_WORK
        self.global_calls += 1
        if self.global_calls == 2:
            self.warnings.append("set_global_description was called more than once; the last call is used")
        self.global_prefix = safe_str(description)
        self.global_suffixes = tuple(safe_str(s) for s in detailed) + (safe_str(tags),)
        self.global_color = COLORS[color]
        self.global_color_name = color
        self.global_texts = (description, tuple(detailed), tags)

    def add_local_description(
        self,
        location: str,
        offset: str,
        area: str,
        distance_to_viewer: float,
        description: str,
        detailed_descriptions: list[str],
        tags: str,
        atmosphere: str,
        style: str,
        quality_meta: str,
        HTML_web_color_name: str,
    ) -> None:
        # The original's order: description, distance, detailed, tags, atmosphere, style,
        # quality_meta, then the names: location, offset, area, colour.
        if not isinstance(description, str):
            raise OmostError(
                f"description of a local description must be a string, got {quote(description)}; "
                "allowed: a string",
                parameter="description",
                value=description,
                allowed="a string",
            )
        who = f"the local description {quote(description)}"
        description = _text(description, "description", who)
        distance = _distance(distance_to_viewer, who)
        detailed = _texts(detailed_descriptions, "detailed_descriptions", who)
        singles = [
            _text(v, p, who)
            for p, v in zip(_LOCAL_TEXT_PARAMS, (tags, atmosphere, style, quality_meta), strict=True)
        ]
        self.work += (
            len(description) + sum(map(len, detailed)) + sum(map(len, singles))
        ) // TEXT_CHARS_PER_WORK
        loc = self._resolve(location, LOCATIONS, "location")
        off = self._resolve(offset, OFFSETS, "offset")
        ar = self._resolve(area, AREAS, "area")
        color = self._resolve(HTML_web_color_name, COLORS, "HTML_web_color_name")
        if len(self.regions) >= self.max_regions:
            raise OmostError(
                f"too many local descriptions: more than {self.max_regions}; allowed: at most {self.max_regions}",
                parameter="add_local_description",
                value=len(self.regions) + 1,
                allowed=f"at most {self.max_regions} calls",
            )
        if self.global_prefix is None and not any(
            w.startswith("add_local_description before") for w in self.warnings
        ):
            self.warnings.append(
                "add_local_description before set_global_description: "
                "every region still gets the global description as its first prefix"
            )
        self.regions.append(
            Region(
                rect=box(loc, off, ar),
                distance=distance,
                color=COLORS[color],
                description=safe_str(description),
                suffixes=tuple(safe_str(s) for s in [*detailed, *singles]),
                index=len(self.regions),
                names=(loc, off, ar, color),
                texts=(description, tuple(detailed), *singles),
            )
        )

    def _resolve(self, value: Any, table: Any, parameter: str) -> str:
        resolved = resolve(value, table, parameter=parameter)
        if resolved.warning:
            self.warnings.append(resolved.warning)
            self.work += FUZZY_MATCH_WORK
        return resolved.name

    def conditions(self) -> list[Condition]:
        """Global condition (if set) first, then the regions far to near (ties keep call order)."""
        ordered = sorted(self.regions, key=lambda r: r.distance, reverse=True)
        head = () if self.global_prefix is None else (self.global_prefix,)
        out = [
            Condition(rect=r.rect, prefixes=(*head, r.description), suffixes=r.suffixes, color=r.color)
            for r in ordered
        ]
        if self.global_prefix is not None and self.global_color is not None:
            out.insert(
                0, Condition(FULL_RECT, (self.global_prefix,), self.global_suffixes, self.global_color)
            )
        return out

    def process(self) -> Layout:
        """The original's ``process()`` as a Layout (masks via ``Condition.mask()``, sketch via ``Layout.sketch()``)."""
        if self.global_prefix is None:
            raise OmostError(
                "the program never calls canvas.set_global_description(...); allowed: a program that sets the "
                "global description (description, detailed_descriptions, tags, HTML_web_color_name) once",
                parameter="set_global_description",
                value=None,
                allowed="exactly one set_global_description call",
            )
        layout = Layout(conditions=self.conditions(), warnings=list(self.warnings), meta={})
        size = len(layout.dumps().encode("utf-8"))
        if size > MAX_LAYOUT_BYTES:
            raise OmostError(
                f"the canvas is too large: its layout file would be {size} bytes; allowed: at most "
                f"{MAX_LAYOUT_BYTES} bytes (fewer regions or shorter descriptions)",
                parameter="layout",
                value=size,
                allowed=f"at most {MAX_LAYOUT_BYTES} bytes",
            )
        return layout
