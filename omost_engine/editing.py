"""Editing a composition in the canvas's own terms, without the LLM.

A ``CanvasSpec`` is the canvas program as data: the global description and the regions in call
order, each with its location / offset / area / colour *names*, its ``distance_to_viewer`` and its
own texts. It is read from a program (``from_program``) or, for a layout alone, inferred from the
conditions (``from_layout``: the program kept in ``layout.meta["program"]`` when it still makes these
conditions, else names inferred from the rects and colours, with a note for every guess).

Every edit is a pure function ``edit(spec, ...) -> Edit`` that returns a new spec, or raises one
``OmostError`` and changes nothing. The spec is turned into a layout by running the real ``Canvas``
(``spec.layout()``), so every check, every rect and the drawing order are the canvas's own, and into
a program (``spec.program()``) that the interpreter runs back to the same conditions, so that a
later LLM turn continues from the edited program.

Regions are addressed by their *number*: 0 is the global description, 1..n the regions in drawing
order (far to near), the numbers ``preview.masks_image`` draws on the map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from omost_engine.canvas import Canvas, box, safe_str
from omost_engine.conditions import GRID
from omost_engine.errors import OmostError, quote
from omost_engine.interpreter import interpret
from omost_engine.layout import MAX_REGIONS, MAX_TEXT_CHARS, Layout
from omost_engine.names import resolve
from omost_engine.tables import AREAS, COLORS, LOCATIONS, OFFSETS

# CLIP's 77-token chunk holds 75 content tokens between bos and eos (render/prompt_encoding.py).
CLIP_CONTENT_TOKENS = 75
TokenCounter = Callable[[str], int]  # text -> CLIP token count (no bos/eos), e.g. PromptEncoder.count_tokens

GLOBAL_TEXT_FIELDS = ("description", "detailed_descriptions", "tags")
REGION_TEXT_FIELDS = ("description", "detailed_descriptions", "tags", "atmosphere", "style", "quality_meta")

# Defaults of a region added by the editor: a valid, visible box drawn nearest to the viewer.
NEW_REGION_LOCATION = "in the center"
NEW_REGION_OFFSET = "no offset"
NEW_REGION_AREA = "a small square area"
NEW_REGION_COLOR = "white"
NEW_REGION_DESCRIPTION = "A new object"

# Every (location, offset, area) box, first name triple in table order for each distinct rect.
_BOX_NAMES: dict[tuple[int, int, int, int], tuple[str, str, str]] = {}
for _loc in LOCATIONS:
    for _off in OFFSETS:
        for _area in AREAS:
            _BOX_NAMES.setdefault(box(_loc, _off, _area), (_loc, _off, _area))


@dataclass(frozen=True)
class GlobalSpec:
    description: str
    detailed_descriptions: tuple[str, ...]
    tags: str
    color: str  # a key of tables.COLORS


@dataclass(frozen=True)
class RegionSpec:
    location: str
    offset: str
    area: str
    distance: float  # distance_to_viewer: only the order matters, larger is farther
    description: str
    detailed_descriptions: tuple[str, ...]
    tags: str
    atmosphere: str
    style: str
    quality_meta: str
    color: str

    @property
    def rect(self) -> tuple[int, int, int, int]:
        return box(self.location, self.offset, self.area)


@dataclass(frozen=True)
class CanvasSpec:
    """A canvas program as data (regions in call order). Build layouts and programs from it."""

    global_: GlobalSpec
    regions: tuple[RegionSpec, ...]
    # What reading it assumed (names inferred from a layout); shown to the user, never part of the canvas.
    notes: tuple[str, ...] = field(default=(), compare=False)

    # -- reading -------------------------------------------------------------------------------------

    @classmethod
    def from_canvas(cls, canvas: Canvas) -> CanvasSpec:
        if canvas.global_prefix is None or canvas.global_color_name is None:
            canvas.process()  # raises the canvas's own "never sets the global description" error
        description, detailed, tags = canvas.global_texts
        glob = GlobalSpec(description, tuple(detailed), tags, canvas.global_color_name or "white")
        regions = []
        for r in canvas.regions:
            location, offset, area, color = r.names
            description, detailed, tags, atmosphere, style, quality = r.texts
            regions.append(
                RegionSpec(
                    location,
                    offset,
                    area,
                    r.distance,
                    description,
                    tuple(detailed),
                    tags,
                    atmosphere,
                    style,
                    quality,
                    color,
                )
            )
        return cls(glob, tuple(regions))

    @classmethod
    def from_program(cls, code: str) -> CanvasSpec:
        """The spec of a canvas program (OmostError as ``interpret`` / ``process`` raise it)."""
        canvas = interpret(code)
        canvas.process()
        return cls.from_canvas(canvas)

    @classmethod
    def from_layout(cls, layout: Layout, *, program: str | None = None) -> CanvasSpec:
        """The spec behind ``layout``: its program when it makes exactly these conditions, else inferred."""
        code = program if program is not None else layout.meta.get("program")
        if isinstance(code, str):
            try:
                spec = cls.from_program(code)
            except OmostError:
                spec = None
            if spec is not None and spec.layout().conditions == list(layout.conditions):
                return spec
        return _infer(layout)

    # -- the canvas ----------------------------------------------------------------------------------

    def canvas(self) -> Canvas:
        """A real Canvas built by calling its methods with this spec: the canvas's checks all apply."""
        canvas = Canvas(max_regions=MAX_REGIONS)
        g = self.global_
        canvas.set_global_description(g.description, list(g.detailed_descriptions), g.tags, g.color)
        for r in self.regions:
            canvas.add_local_description(
                r.location,
                r.offset,
                r.area,
                r.distance,
                r.description,
                list(r.detailed_descriptions),
                r.tags,
                r.atmosphere,
                r.style,
                r.quality_meta,
                r.color,
            )
        return canvas

    def layout(self) -> Layout:
        """The layout the canvas makes from this spec (OmostError for an invalid spec)."""
        return self.canvas().process()

    def apply_to(self, layout: Layout) -> Layout:
        """This spec's conditions with ``layout``'s meta (seed, size, ...) and the regenerated program."""
        made = self.layout()
        return replace(made, meta={**layout.meta, "program": self.program()})

    def order(self) -> list[int]:
        """Indexes into ``regions`` in drawing order, far to near: the canvas's own (stable) sort."""
        return sorted(range(len(self.regions)), key=lambda i: self.regions[i].distance, reverse=True)

    def region(self, number: int) -> RegionSpec:
        return self.regions[self._index(number)]

    def number_of(self, index: int) -> int:
        """The region number (1 = farthest) of ``regions[index]``."""
        return self.order().index(index) + 1

    def _index(self, number: int) -> int:
        if type(number) is not int or not 1 <= number <= len(self.regions):
            allowed = (
                f"1 to {len(self.regions)}"
                if self.regions
                else "none (the canvas has only the global description)"
            )
            raise OmostError(
                f"there is no region {quote(number)}; allowed: {allowed}",
                parameter="region",
                value=number,
                allowed=allowed,
            )
        return self.order()[number - 1]

    def label(self, number: int, chars: int = 60) -> str:
        """A select-menu label: ``"0 · global — A cat"``, ``"1 · in the center, a large square area — A cat"``."""
        if number == 0:
            head, text = "global", self.global_.description
        else:
            r = self.region(number)
            head = r.location + ("" if r.offset == "no offset" else f" {r.offset}") + f", {r.area}"
            text = r.description
        text = text.strip()
        if len(text) > chars:
            text = text[: chars - 1].rstrip() + "…"
        return f"{number} · {head} — {text}"

    # -- writing -------------------------------------------------------------------------------------

    def program(self) -> str:
        """A canvas program in the Omost format that the interpreter runs back to this spec's conditions."""
        g = self.global_
        lines = [
            "# Initialize the canvas",
            "canvas = Canvas()",
            "",
            "# Set a global description for the canvas",
            "canvas.set_global_description(",
            f"    description={g.description!r},",
            f"    detailed_descriptions={_list(g.detailed_descriptions)},",
            f"    tags={g.tags!r},",
            f"    HTML_web_color_name={g.color!r},",
            ")",
        ]
        for r in self.regions:
            lines += [
                "",
                f"# Add {_comment(r.description)}",
                "canvas.add_local_description(",
                f"    location={r.location!r},",
                f"    offset={r.offset!r},",
                f"    area={r.area!r},",
                f"    distance_to_viewer={_number(r.distance)},",
                f"    description={r.description!r},",
                f"    detailed_descriptions={_list(r.detailed_descriptions)},",
                f"    tags={r.tags!r},",
                f"    atmosphere={r.atmosphere!r},",
                f"    style={r.style!r},",
                f"    quality_meta={r.quality_meta!r},",
                f"    HTML_web_color_name={r.color!r},",
                ")",
            ]
        return "\n".join(lines) + "\n"

    def reply(self) -> str:
        """The program as an assistant reply (a python block), for the conversation the LLM continues."""
        return "```python\n" + self.program() + "```"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (an editor's state in SQLite); ``from_json`` reads it back and re-checks it."""
        g = self.global_
        return {
            "global": {
                "description": g.description,
                "detailed_descriptions": list(g.detailed_descriptions),
                "tags": g.tags,
                "color": g.color,
            },
            "regions": [
                {
                    "location": r.location,
                    "offset": r.offset,
                    "area": r.area,
                    "distance": "inf" if r.distance == math.inf else r.distance,
                    "description": r.description,
                    "detailed_descriptions": list(r.detailed_descriptions),
                    "tags": r.tags,
                    "atmosphere": r.atmosphere,
                    "style": r.style,
                    "quality_meta": r.quality_meta,
                    "color": r.color,
                }
                for r in self.regions
            ],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, doc: Any) -> CanvasSpec:
        try:
            g = doc["global"]
            glob = GlobalSpec(g["description"], tuple(g["detailed_descriptions"]), g["tags"], g["color"])
            regions = tuple(
                RegionSpec(
                    r["location"],
                    r["offset"],
                    r["area"],
                    math.inf if r["distance"] == "inf" else r["distance"],
                    r["description"],
                    tuple(r["detailed_descriptions"]),
                    r["tags"],
                    r["atmosphere"],
                    r["style"],
                    r["quality_meta"],
                    r["color"],
                )
                for r in doc["regions"]
            )
            notes = tuple(str(n) for n in doc.get("notes", ()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise OmostError(
                f"the saved canvas is not valid ({type(exc).__name__}: {exc}); allowed: "
                "what CanvasSpec.to_json writes",
                parameter="canvas",
            ) from None
        spec = cls(glob, regions, notes)
        spec.layout()  # every check of the canvas, so a tampered state is refused here
        return spec


@dataclass(frozen=True)
class Edit:
    """The result of one edit: the new spec, the region to keep selected (its number after the edit,
    0 for the global description) and a note for the user (a fuzzy name's correction), if any."""

    spec: CanvasSpec
    region: int
    note: str | None = None


# -- edits ---------------------------------------------------------------------------------------------


def set_box(
    spec: CanvasSpec,
    number: int,
    *,
    location: str | None = None,
    offset: str | None = None,
    area: str | None = None,
) -> Edit:
    """Change a region's location, offset and/or area (canvas names; a near miss is corrected, with a note)."""
    if number == 0:
        raise OmostError(
            "the global description covers the whole canvas; allowed: a location, offset or area "
            "for regions 1 and up",
            parameter="region",
            value=0,
            allowed="a region number >= 1",
        )
    index = spec._index(number)
    notes: list[str] = []
    changes: dict[str, Any] = {}  # Any: replace() checks each keyword against every field's type
    for name, value, table in (
        ("location", location, LOCATIONS),
        ("offset", offset, OFFSETS),
        ("area", area, AREAS),
    ):
        if value is not None:
            resolved = resolve(value, table, parameter=name)
            changes[name] = resolved.name
            if resolved.warning:
                notes.append(resolved.warning)
    new = _with_region(spec, index, replace(spec.regions[index], **changes))
    return Edit(new, new.number_of(index), "; ".join(notes) or None)


def closer(spec: CanvasSpec, number: int) -> Edit:
    """Draw the region one place nearer to the viewer (after the next nearer region)."""
    return _move(spec, number, +1)


def farther(spec: CanvasSpec, number: int) -> Edit:
    """Draw the region one place farther from the viewer (before the next farther region)."""
    return _move(spec, number, -1)


def set_text(
    spec: CanvasSpec, number: int, *, count_tokens: TokenCounter | None = None, **texts: Any
) -> Edit:
    """Set text fields: description, detailed_descriptions (a list of strings), tags, and for regions
    atmosphere, style, quality_meta.

    Refused: an empty description, a field the canvas refuses (not text, over 2,000 characters), and,
    with ``count_tokens`` (a CLIP tokenizer's count), a sub-prompt over one CLIP chunk (75 tokens).
    """
    allowed = GLOBAL_TEXT_FIELDS if number == 0 else REGION_TEXT_FIELDS
    where = "the global description" if number == 0 else f"region {number}"
    for name in texts:
        if name not in allowed:
            raise OmostError(
                f"{name} is not a text field of {where}; allowed: {', '.join(allowed)}",
                parameter=name,
                value=name,
                allowed=", ".join(allowed),
            )
    if "detailed_descriptions" in texts:
        value = texts["detailed_descriptions"]
        if not isinstance(value, list | tuple) or not all(isinstance(s, str) for s in value):
            raise OmostError(
                f"detailed_descriptions of {where} must be a list of strings, got {quote(value)}; "
                "allowed: a list of strings (one per line)",
                parameter="detailed_descriptions",
                value=value,
                allowed="a list of strings",
            )
        texts["detailed_descriptions"] = tuple(value)
    if (
        "description" in texts
        and isinstance(texts["description"], str)
        and not texts["description"].strip(",. \n\t")
    ):
        raise OmostError(
            f"the description of {where} is empty; allowed: a short sentence saying what is there",
            parameter="description",
            value=texts["description"],
            allowed="non-empty text",
        )
    for name, value in texts.items():
        for text in value if name == "detailed_descriptions" else (value,):
            if not isinstance(text, str):
                raise OmostError(
                    f"{name} of {where} must be text, got {quote(text)}; allowed: a string",
                    parameter=name,
                    value=text,
                    allowed="a string",
                )
            if count_tokens is not None and len(text) <= MAX_TEXT_CHARS:  # longer: the canvas's own refusal
                tokens = count_tokens(safe_str(text))
                if tokens > CLIP_CONTENT_TOKENS:
                    raise OmostError(
                        f"{name} of {where} is {tokens} CLIP tokens long ({quote(text[:40])}...); allowed: at most "
                        f"{CLIP_CONTENT_TOKENS} tokens, one CLIP chunk (split it into several detailed descriptions)",
                        parameter=name,
                        value=tokens,
                        allowed=f"at most {CLIP_CONTENT_TOKENS} CLIP tokens",
                    )
    if number == 0:
        new = replace(spec, global_=replace(spec.global_, **texts))
        _check(new)
        return Edit(new, 0)
    index = spec._index(number)
    new = _with_region(spec, index, replace(spec.regions[index], **texts))
    return Edit(new, new.number_of(index))


def set_color(spec: CanvasSpec, number: int, name: str) -> Edit:
    """Set the colour by name with the canvas's fuzzy rule; a correction comes back as the note."""
    resolved = resolve(name, COLORS, parameter="HTML_web_color_name")
    note = None if resolved.warning is None else f"colour {quote(name.lower())} -> '{resolved.name}'"
    if number == 0:
        return Edit(replace(spec, global_=replace(spec.global_, color=resolved.name)), 0, note)
    index = spec._index(number)
    return Edit(_with_region(spec, index, replace(spec.regions[index], color=resolved.name)), number, note)


def add_region(
    spec: CanvasSpec,
    *,
    description: str = NEW_REGION_DESCRIPTION,
    location: str = NEW_REGION_LOCATION,
    offset: str = NEW_REGION_OFFSET,
    area: str = NEW_REGION_AREA,
    color: str = NEW_REGION_COLOR,
    count_tokens: TokenCounter | None = None,
) -> Edit:
    """Add a region (defaults: a small square in the centre, white), drawn nearest to the viewer."""
    if len(spec.regions) >= MAX_REGIONS:
        raise OmostError(
            f"the canvas already has {len(spec.regions)} regions; allowed: at most {MAX_REGIONS}",
            parameter="regions",
            value=len(spec.regions) + 1,
            allowed=f"at most {MAX_REGIONS} regions",
        )
    finite = [r.distance for r in spec.regions if r.distance != math.inf]
    distance = min(finite) / 2 if finite else 1.0
    region = RegionSpec(
        NEW_REGION_LOCATION,
        NEW_REGION_OFFSET,
        NEW_REGION_AREA,
        distance,
        NEW_REGION_DESCRIPTION,
        (),
        "",
        "",
        "",
        "",
        NEW_REGION_COLOR,
    )
    new = replace(spec, regions=(*spec.regions, region))  # smallest distance: drawn last, number n
    edit = set_box(new, len(new.regions), location=location, offset=offset, area=area)
    edit = set_text(edit.spec, edit.region, description=description, count_tokens=count_tokens)
    return set_color(edit.spec, edit.region, color)


def delete_region(spec: CanvasSpec, number: int) -> Edit:
    """Delete a region; the global description and the last region cannot be deleted."""
    if number == 0:
        raise OmostError(
            "the global description cannot be deleted; allowed: regions 1 and up",
            parameter="region",
            value=0,
            allowed="a region number >= 1",
        )
    index = spec._index(number)
    if len(spec.regions) == 1:
        raise OmostError(
            "this is the last region and cannot be deleted; allowed: deleting a region while "
            "another remains (edit this one instead)",
            parameter="region",
            value=number,
            allowed="at least one region kept",
        )
    new = replace(spec, regions=spec.regions[:index] + spec.regions[index + 1 :])
    _check(new)
    return Edit(new, min(number, len(new.regions)))


def lines(text: str) -> list[str]:
    """Detailed descriptions from a form field: one per non-empty line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


# -- internals -------------------------------------------------------------------------------------------


def _check(spec: CanvasSpec) -> None:
    spec.layout()


def _with_region(spec: CanvasSpec, index: int, region: RegionSpec) -> CanvasSpec:
    new = replace(spec, regions=spec.regions[:index] + (region,) + spec.regions[index + 1 :])
    _check(new)
    return new


def _renumber(spec: CanvasSpec, order: Sequence[int]) -> CanvasSpec:
    """Distances n, n-1, ..., 1 in the given far-to-near order (only the order matters to the canvas)."""
    regions = list(spec.regions)
    for rank, index in enumerate(order):
        regions[index] = replace(regions[index], distance=float(len(order) - rank))
    return replace(spec, regions=tuple(regions))


def _move(spec: CanvasSpec, number: int, step: int) -> Edit:
    index = spec._index(number)
    order = spec.order()
    position = number - 1
    target = position + step
    if not 0 <= target < len(order):
        which = "nearest to the viewer" if step > 0 else "farthest from the viewer"
        raise OmostError(
            f"region {number} is already the {which}; allowed: "
            f"{'Farther' if step > 0 else 'Closer'} for this region, or another region",
            parameter="distance_to_viewer",
            value=number,
            allowed="a region that can move",
        )
    wanted = list(order)
    wanted[position], wanted[target] = wanted[target], wanted[position]
    farther_d = spec.regions[wanted[target - 1]].distance if target > 0 else None
    nearer_d = spec.regions[wanted[target + 1]].distance if target + 1 < len(wanted) else None
    for distance in _candidates(farther_d, nearer_d):
        moved = replace(
            spec,
            regions=tuple(
                replace(r, distance=distance) if i == index else r for i, r in enumerate(spec.regions)
            ),
        )
        if moved.order() == wanted:
            break
    else:  # ties or infinities leave no single value: renumber every region in the wanted order
        moved = _renumber(spec, wanted)
    return Edit(moved, target + 1)


def _candidates(farther: float | None, nearer: float | None) -> list[float]:
    """Distances to try between two neighbours, round numbers first."""
    if farther is None and nearer is not None:
        return [] if nearer == math.inf else [float(math.floor(nearer) + 1)]
    if nearer is None and farther is not None:
        return [] if farther == math.inf else [farther / 2]
    if farther is None or nearer is None or math.inf in (farther, nearer):
        return []
    middle = (farther + nearer) / 2
    return [round(middle, digits) for digits in range(0, 7)] + [middle]


def _list(items: Sequence[str]) -> str:
    if not items:
        return "[]"
    return "[\n" + "".join(f"        {s!r},\n" for s in items) + "    ]"


def _number(value: float) -> str:
    if value == math.inf:
        return "float('inf')"
    return repr(value)


def _comment(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line[:60] + ("..." if len(one_line) > 60 else "")


def _closest_box(rect: tuple[int, int, int, int]) -> tuple[str, str, str]:
    return _BOX_NAMES[min(_BOX_NAMES, key=lambda r: sum(abs(a - b) for a, b in zip(r, rect, strict=True)))]


def _closest_color(rgb: tuple[int, int, int]) -> str:
    return min(COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLORS[name], rgb, strict=True)))


def _infer(layout: Layout) -> CanvasSpec:
    """Names and distances from the conditions (a layout without its program), noting every guess."""
    notes: list[str] = []
    glob = layout.global_condition
    if glob is None:
        raise OmostError(
            "the layout has no global condition; allowed: a layout whose first condition covers "
            f"the whole grid [0, {GRID}, 0, {GRID}]",
            parameter="layout",
        )
    color = _color_name(glob.color, "the global description", notes)
    g_description = glob.prefixes[0] if glob.prefixes else ""
    g_suffixes = list(glob.suffixes)
    g_tags = g_suffixes.pop() if g_suffixes else ""
    global_spec = GlobalSpec(g_description, tuple(g_suffixes), g_tags, color)
    regions: list[RegionSpec] = []
    count = len(layout.regions)
    for number, cond in enumerate(layout.regions, start=1):
        names = _BOX_NAMES.get(cond.rect)
        if names is None:
            names = _closest_box(cond.rect)
            notes.append(
                f"region {number}: its box {list(cond.rect)} is not a canvas box; using the nearest, "
                f"{list(box(*names))} ({', '.join(names)})"
            )
        color = _color_name(cond.color, f"region {number}", notes)
        description = (
            cond.prefixes[-1] if len(cond.prefixes) > 1 else (cond.prefixes[0] if cond.prefixes else "")
        )
        if len(cond.prefixes) != 2 or cond.prefixes[0] != g_description:
            notes.append(
                f"region {number}: its prefixes are not (global description, own description); "
                "the canvas gives it the global description as its first prefix"
            )
        suffixes = list(cond.suffixes)
        if len(suffixes) < 4:
            notes.append(
                f"region {number}: fewer suffixes than a canvas region has (detailed descriptions, tags, "
                "atmosphere, style, quality); the missing ones are empty"
            )
            suffixes = [*suffixes, *[""] * (4 - len(suffixes))]
        *detailed, tags, atmosphere, style, quality = suffixes
        regions.append(
            RegionSpec(
                *names,
                float(count - number + 1),
                description,
                tuple(detailed),
                tags,
                atmosphere,
                style,
                quality,
                color,
            )
        )
    return CanvasSpec(global_spec, tuple(regions), tuple(notes))


def _color_name(rgb: tuple[int, int, int], who: str, notes: list[str]) -> str:
    for name, value in COLORS.items():
        if tuple(value) == tuple(rgb):
            return name
    name = _closest_color(rgb)
    notes.append(
        f"{who}: colour {list(rgb)} has no HTML colour name; using the nearest, {name} {list(COLORS[name])}"
    )
    return name
