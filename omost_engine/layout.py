"""The layout: what a canvas program produces, what the renderer consumes, and the file users keep.

The file (format version 2, ``docs/canvas.md``) is the JSON list ComfyUI_omost's "Load Canvas
Conditioning" node reads unchanged: ``{"rect": [top, bottom, left, right], "prefixes": [...],
"suffixes": [...], "color": [r, g, b]}`` per condition, global first, then far to near. The first
condition also carries one key ComfyUI ignores, ``"omost_bot"``: the format name and version and what
reproduces the image (every render parameter with the seed, the SDXL model, the LLM and its
parameters, the prompt, the program, what was overridden). Its JSON Schema is
``omost_engine/schema/layout.schema.json``, generated from the declarations here and in
``omost_engine.params``.

Older files keep loading and are upgraded, with a note of what was assumed: the version-1 object
(``{"format", "version": 1, "conditions", "warnings", "meta"}``) with the bot's meta (flat render
fields, ``meta.seed``, ``meta.sdxl``), the CLI's (``meta.render = {model, seconds, params}``) or the
old documentation's (``meta.seed``, ``meta.size``), and ComfyUI's bare lists.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import Field, field_validator

from omost_engine.conditions import GRID, Condition
from omost_engine.declared import Declared, check_value, show
from omost_engine.errors import OmostError
from omost_engine.params import LLMParams, RenderParams

FORMAT: Final = "omost-bot-layout"  # Final: its type is the literal the schema allows
VERSION = 2
META_KEY = "omost_bot"  # the key in the first condition that carries the reproduction record
CONDITION_KEYS = ("rect", "prefixes", "suffixes", "color")

# Limits shared by the canvas and the loader, so that every layout a program makes loads back.
MAX_LAYOUT_BYTES = 256 * 1024  # the largest layout a canvas program may make
MAX_REGIONS = 64  # local regions, not counting the global condition
MAX_TEXTS = 64  # prefixes (or suffixes) of one condition
MAX_TEXT_CHARS = 2000  # one sub-prompt; the original's are under 75 CLIP tokens
MAX_WARNINGS = 1000  # a canvas makes at most 4 per region (name corrections) plus 2
MAX_OVERRIDES = 64  # lines in a record's overrides
MAX_JSON_DIGITS = 30  # no number in a layout file needs more; Python cannot even print 4300+ digits

LAYOUT_BYTES_ENV = "OMOST_MAX_LAYOUT_BYTES"
LayoutBytes = Annotated[int, Field(ge=1024, le=25 * 1024 * 1024)]
DEFAULT_MAX_LAYOUT_BYTES = 512 * 1024

FULL_RECT = (0, GRID, 0, GRID)
_NUMBER_LIST = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")
DEFAULT_COLOR = (255, 255, 255)  # for a loaded condition without "color" (it only tints the sketch)

Text = Annotated[str, Field(max_length=4096)]
Note = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class LayoutLimits(Declared):
    """The largest layout file accepted: ``OMOST_MAX_LAYOUT_BYTES``, the one limit (bot, CLI, loader)."""

    max_layout_bytes: LayoutBytes = Field(
        DEFAULT_MAX_LAYOUT_BYTES, description="largest layout file accepted"
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> int:
        raw = (os.environ if environ is None else environ).get(LAYOUT_BYTES_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_LAYOUT_BYTES
        value: Any = int(raw) if re.fullmatch(r"\d{1,25}", raw) else raw
        return int(check_value(cls, "max_layout_bytes", value, label=LAYOUT_BYTES_ENV, say_kind=True))


class LayoutRecord(Declared):
    """The ``"omost_bot"`` entry of a layout file: everything that reproduces its image."""

    format: Literal["omost-bot-layout"] = Field(FORMAT, description="always omost-bot-layout")
    version: Annotated[int, Field(ge=2, le=VERSION)] = Field(VERSION, description="layout format version")
    render: dict[str, Any] | None = Field(
        None,
        description="render parameters (RenderParams: seed, size, steps, method, strengths, prompts, "
        "high-res fix); a file may give only some, the reader's defaults fill the rest",
    )
    sdxl: Text | None = Field(None, description="the SDXL model that rendered it")
    llm: Text | None = Field(None, description="the LLM that wrote the program")
    llm_params: dict[str, Any] | None = Field(None, description="the LLM's sampling parameters (LLMParams)")
    prompt: Annotated[str, Field(max_length=20_000)] | None = Field(None, description="the user's prompt")
    program: Annotated[str, Field(max_length=64 * 1024)] | None = Field(
        None, description="the canvas program the LLM wrote"
    )
    job: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(None, description="the bot's job number")
    seconds: Annotated[float, Field(ge=0, le=10**7)] | None = Field(None, description="time taken")
    overrides: Annotated[list[Note], Field(max_length=MAX_OVERRIDES)] = Field(
        [], description="what the command line or the command's options changed from the file rendered"
    )
    warnings: Annotated[list[Note], Field(max_length=MAX_WARNINGS)] = Field(
        [], description="name corrections and other notes from the canvas"
    )

    @field_validator("render")
    @classmethod
    def _render(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else RenderParams.check_fields(value, where=f"{META_KEY}.render")

    @field_validator("llm_params")
    @classmethod
    def _llm_params(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else LLMParams.check_fields(value, where=f"{META_KEY}.llm_params")


# Meta keys written to the file (in this order); other in-memory meta (a test engine's notes) stays in memory.
RECORD_META = ("render", "sdxl", "llm", "llm_params", "prompt", "program", "job", "seconds", "overrides")


@dataclass
class Layout:
    conditions: list[Condition]  # global first, then far -> near
    warnings: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # What loading assumed (an upgraded old file, a bare ComfyUI list, ignored keys). Never written.
    notes: list[str] = field(default_factory=list, compare=False)

    def record(self) -> LayoutRecord:
        """The reproduction record written into the file (validated: a bad meta value fails here)."""
        values = {k: self.meta[k] for k in RECORD_META if self.meta.get(k) is not None}
        # Lists that grow as a file is rendered again and again keep within their declared length:
        # the newest overrides, the first warnings.
        if "overrides" in values:
            values["overrides"] = list(values["overrides"])[-MAX_OVERRIDES:]
        return LayoutRecord(**values, warnings=list(self.warnings)[:MAX_WARNINGS])

    def to_json(self) -> list[dict[str, Any]]:
        """The file's document: the ComfyUI list, with the record in the first condition."""
        items = self.to_comfyui()
        if items:
            record = self.record().model_dump(mode="json", exclude_none=True)
            if not record.get("overrides"):
                record.pop("overrides", None)
            if not record.get("warnings"):
                record.pop("warnings", None)
            items[0][META_KEY] = record
        return items

    def to_comfyui(self) -> list[dict[str, Any]]:
        """The bare list ComfyUI_omost's "Load Canvas Conditioning" node reads (no record)."""
        return [c.to_json() for c in self.conditions]

    def dumps(self) -> str:
        """Indented JSON for hand editing, with number lists (rect, color) kept on one line."""
        return _compact_numbers(json.dumps(self.to_json(), ensure_ascii=False, indent=1, allow_nan=False))

    def with_meta(self, **meta: Any) -> Layout:
        return replace(self, warnings=list(self.warnings), meta={**self.meta, **meta}, notes=list(self.notes))

    @property
    def render_settings(self) -> dict[str, Any]:
        """The render parameters the file carries (validated; possibly only some of them)."""
        stored = self.meta.get("render")
        return dict(stored) if isinstance(stored, dict) else {}

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
        pixels: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
        return pixels

    @classmethod
    def loads(cls, data: bytes | str, *, max_bytes: int | None = None) -> Layout:
        """Parse and validate a layout file (any shape above). ``max_bytes``: the configured limit
        (``OMOST_MAX_LAYOUT_BYTES``); without it, the default."""
        limit = DEFAULT_MAX_LAYOUT_BYTES if max_bytes is None else max_bytes
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if len(raw) > limit:
            raise OmostError(
                f"the layout file is too large: {len(raw)} bytes; allowed: at most {limit} bytes",
                parameter="layout",
                value=len(raw),
                allowed=f"at most {limit} bytes",
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
        return cls.from_json(parse_json(text))

    @classmethod
    def from_json(cls, doc: Any) -> Layout:
        """Validate an already-decoded layout (any shape); old shapes are upgraded with notes."""
        warnings: list[str] = []
        notes: list[str] = []
        meta: dict[str, Any] = {}
        if isinstance(doc, dict):
            items, warnings, meta, notes = _upgrade_v1(doc)
        elif isinstance(doc, list):
            items = doc
            first = items[0] if items and isinstance(items[0], dict) else {}
            if META_KEY in first:
                record = _record(first[META_KEY])
                warnings = list(record.warnings)
                meta = {k: getattr(record, k) for k in RECORD_META if getattr(record, k) not in (None, [])}
            elif items:
                notes.append(
                    "a bare ComfyUI_omost list: it carries no seed, models or render settings, "
                    "so the defaults were used"
                )
        else:
            raise _bad("layout", doc, "a JSON list of conditions (the global one first)")
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
        conditions = [_condition(item, i, warnings, notes) for i, item in enumerate(items)]
        if conditions[0].rect != FULL_RECT:
            raise OmostError(
                f"conditions[0].rect is {list(conditions[0].rect)}, so the layout has no global condition; "
                f"allowed: the first condition must cover the whole grid, rect {list(FULL_RECT)}",
                parameter="conditions[0].rect",
                value=list(conditions[0].rect),
                allowed=str(list(FULL_RECT)),
            )
        return cls(conditions=conditions, warnings=warnings, meta=meta, notes=notes)


def _compact_numbers(text: str) -> str:
    # Raw newlines only occur between JSON tokens (in strings they are escaped), so this touches structure only.
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", text)


class _NumberTooLarge(Exception):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise _NumberTooLarge(len(text.lstrip("-")))
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberTooLarge(len(text))
    return value


def _refuse_constant(name: str) -> Any:
    raise OmostError(
        f"the layout file contains {name}; allowed: finite numbers only (no NaN or Infinity)",
        parameter="layout",
        value=name,
        allowed="finite numbers (no NaN or Infinity)",
    )


def parse_json(text: str) -> Any:
    """``json.loads`` for a layout file: one clear ``OmostError`` for anything it cannot take, including
    numbers too large to use (Python refuses to convert integers of more than 4300 digits)."""
    try:
        return json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant
        )
    except _NumberTooLarge as exc:
        raise OmostError(
            f"the layout file contains a {exc.args[0]}-digit number; allowed: numbers of at most "
            f"{MAX_JSON_DIGITS} digits (rects are 0-90, colours 0-255, seeds below 2^32)",
            parameter="layout",
            value=f"{exc.args[0]} digits",
            allowed=f"at most {MAX_JSON_DIGITS} digits",
        ) from None
    except json.JSONDecodeError as exc:
        raise OmostError(
            f"the layout file is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "allowed: a JSON list of conditions (an omost-bot or ComfyUI_omost layout)",
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
    except ValueError as exc:  # anything else the decoder refuses
        raise OmostError(
            f"the layout file is not valid JSON ({str(exc)[:80]}); allowed: JSON",
            parameter="layout",
            allowed="JSON",
        ) from None


def _record(value: Any) -> LayoutRecord:
    if not isinstance(value, dict):
        raise _bad(META_KEY, value, "an object with format, version and the render settings")
    version = value.get("version")
    if value.get("format") != FORMAT:
        raise _bad(f"{META_KEY}.format", value.get("format"), f"'{FORMAT}'")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise OmostError(
            f"this layout file was written by a newer omost-bot (format version {show(version)}); allowed: "
            f"versions up to {VERSION} (update omost-bot, or remove the {META_KEY!r} entry to load it as a "
            "plain ComfyUI list)",
            parameter=f"{META_KEY}.version",
            value=version,
            allowed=f"1..{VERSION}",
        )
    _check_text(value)
    return LayoutRecord.from_dict(value, unknown="refuse", where=META_KEY)


def _check_text(value: Any) -> None:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise _bad(META_KEY, "...", "plain JSON values (no NaN or Infinity)") from None
    if not utf8_safe(text):
        raise _bad(META_KEY, "...", "text that can be written as UTF-8 (no lone surrogates)")


# -- version 1 (the wrapped object) ---------------------------------------------------------------------


def _upgrade_v1(doc: dict[str, Any]) -> tuple[Any, list[str], dict[str, Any], list[str]]:
    """(conditions, warnings, meta, notes) of a version-1 file, its meta mapped onto the record."""
    fmt, version = doc.get("format"), doc.get("version")
    if fmt != FORMAT:
        raise _bad("format", fmt, f"'{FORMAT}' (or a JSON list of conditions)")
    if type(version) is not int or version < 1:
        raise _bad("version", version, "the integer 1 (an object) or a JSON list (version 2)")
    if version > 1:
        newer = version > VERSION
        raise OmostError(
            f"format version {show(version)} "
            + (
                f"was written by a newer omost-bot (this one reads up to {VERSION})"
                if newer
                else f"files are a JSON list with the {META_KEY!r} entry in the first condition, not an object"
            )
            + f"; allowed: version 1 (an object) or a list with version {VERSION}",
            parameter="version",
            value=version,
            allowed=f"1 (an object) or a list with version {VERSION}",
        )
    unknown = sorted(set(doc) - {"format", "version", "conditions", "warnings", "meta"})
    if unknown:
        raise _bad("key", unknown[0], "format, version, conditions, warnings, meta")
    warnings = _texts(doc.get("warnings", []), "warnings", MAX_WARNINGS)
    old = doc.get("meta", {})
    if not isinstance(old, dict):
        raise _bad("meta", old, "a JSON object")
    try:
        meta_text = json.dumps(old, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise _bad("meta", "...", "plain JSON values (no NaN or Infinity)") from None
    if not utf8_safe(meta_text):
        raise _bad("meta", "...", "text that can be written as UTF-8 (no lone surrogates)")
    meta, notes = _upgrade_meta(old)
    return doc.get("conditions"), warnings, meta, notes


def _old_render_params(old: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The render parameters of a version-1 meta (any of its three shapes) and which shape it was;
    the CLI shape's model and time go into ``meta``."""
    render = old.get("render")
    params: dict[str, Any] = {}
    if render is None:
        shape = (
            "the documentation's shape (meta.seed, meta.size)"
            if "size" in old or "seed" in old
            else "no meta"
        )
    elif not isinstance(render, dict):
        raise _bad("meta.render", render, "an object: the render settings (or {model, seconds, params})")
    elif "params" in render:
        shape = "the CLI's shape (meta.render = {model, seconds, params})"
        if not isinstance(render["params"], dict):
            raise _bad("meta.render.params", render["params"], "an object of render parameters")
        params = dict(render["params"])
        for key, target in (("model", "sdxl"), ("seconds", "seconds")):
            if render.get(key) is not None:
                meta[target] = render[key]
    else:
        shape = "the bot's shape (flat render fields, meta.seed, meta.sdxl)"
        params = dict(render)
    seed = old.get("seed")
    if seed is not None and "seed" not in params:
        params["seed"] = seed
    size = old.get("size")
    if size is not None and "width" not in params:
        if not (isinstance(size, list) and len(size) == 2):
            raise _bad("meta.size", size, "[width, height]")
        params["width"], params["height"] = size
    return params, shape


def _upgrade_note(shape: str, params: dict[str, Any], ignored: list[str]) -> str:
    note = f"upgraded from layout format version 1, {shape}"
    missing = [k for k in ("seed", "width", "steps") if k not in params]
    if missing:
        note += "; not in the file, so the defaults were used: " + ", ".join(
            {"seed": "seed", "width": "size", "steps": "the other render settings"}[k] for k in missing
        )
    if ignored:
        note += "; ignored: meta." + ", meta.".join(ignored[:8])
    return note


def _upgrade_meta(old: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    meta: dict[str, Any] = {}
    params, shape = _old_render_params(old, meta)
    dropped = sorted(k for k in params if k not in RenderParams.model_fields)
    for key in dropped:
        del params[key]
    if params:
        meta["render"] = RenderParams.check_fields(params, where="meta.render")
    for key in ("sdxl", "llm", "prompt", "job"):
        if old.get(key) is not None:
            meta[key] = old[key]
    if isinstance(old.get("llm_params"), dict):
        meta["llm_params"] = {k: v for k, v in old["llm_params"].items() if k in LLMParams.model_fields}
    ignored = sorted(
        (set(old) - {"render", "seed", "size", "sdxl", "llm", "prompt", "job", "llm_params"})
        | {f"render.{k}" for k in dropped}
    )
    # The record's declarations check every value carried over (one clear line for a bad one).
    record = LayoutRecord.from_dict({**meta, "render": meta.get("render")}, where="meta")
    meta = {k: getattr(record, k) for k in RECORD_META if getattr(record, k) not in (None, [])}
    return meta, [_upgrade_note(shape, params, ignored)]


# -- conditions -----------------------------------------------------------------------------------------


def utf8_safe(text: str) -> bool:
    """False for strings that cannot be written as UTF-8 (lone surrogates, e.g. from a JSON "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad(parameter: str, value: Any, allowed: str) -> OmostError:
    return OmostError(
        f"{parameter} {show(value)} is not valid in a layout file; allowed: {allowed}",
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


def _condition(item: Any, index: int, warnings: list[str], notes: list[str]) -> Condition:
    where = f"conditions[{index}]"
    if not isinstance(item, dict):
        raise _bad(where, item, "an object with rect, prefixes, suffixes, color")
    missing = [k for k in ("rect", "prefixes", "suffixes") if k not in item]
    if missing:
        raise _bad(f"{where}.{missing[0]}", None, "rect, prefixes and suffixes are required")
    if index and META_KEY in item:
        raise _bad(f"{where}.{META_KEY}", "...", f"the {META_KEY!r} entry only in the first condition")
    extra = sorted(str(k) for k in item if k not in CONDITION_KEYS and k != META_KEY)
    if extra:  # other tools' keys (ComfyUI's in-memory "mask"): not ours to interpret
        notes.append(f"{where}: ignored {', '.join(repr(k[:40]) for k in extra[:4])}")
    rect = item["rect"]
    if not _ints(rect, 4):
        raise _bad(f"{where}.rect", rect, "4 integers [top, bottom, left, right] on the 90x90 grid")
    top, bottom, left, right = rect
    if not (0 <= top < bottom <= GRID and 0 <= left < right <= GRID):
        raise _bad(
            f"{where}.rect",
            rect,
            f"0 <= top < bottom <= {GRID} and 0 <= left < right <= {GRID} (a non-empty box)",
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
    red, green, blue = color  # three ints, checked above
    return Condition(
        rect=(top, bottom, left, right),
        prefixes=tuple(prefixes),
        suffixes=tuple(suffixes),
        color=(red, green, blue),
    )


# -- the JSON Schema --------------------------------------------------------------------------------------


def layout_json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a layout file, from the declarations (``omost_engine/schema``)."""
    texts = {"type": "array", "maxItems": MAX_TEXTS, "items": {"type": "string", "maxLength": MAX_TEXT_CHARS}}
    grid = {"type": "integer", "minimum": 0, "maximum": GRID}
    condition = {
        "type": "object",
        "required": ["rect", "prefixes", "suffixes", "color"],
        "properties": {
            "rect": {
                "type": "array",
                "prefixItems": [grid] * 4,
                "minItems": 4,
                "maxItems": 4,
                "description": "[top, bottom, left, right] on the 90x90 grid, end-exclusive",
            },
            "prefixes": texts,
            "suffixes": texts,
            "color": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 255},
                "minItems": 3,
                "maxItems": 3,
            },
        },
    }
    record = LayoutRecord.model_json_schema(ref_template="#/$defs/{model}")
    defs = record.pop("$defs", {})
    record["required"] = ["format", "version"]
    render = RenderParams.model_json_schema(ref_template="#/$defs/{model}")
    llm = LLMParams.model_json_schema(ref_template="#/$defs/{model}")
    record["properties"]["render"] = {
        "anyOf": [{"$ref": "#/$defs/RenderParams"}, {"type": "null"}],
        "description": record["properties"]["render"].get("description", ""),
    }
    record["properties"]["llm_params"] = {
        "anyOf": [{"$ref": "#/$defs/LLMParams"}, {"type": "null"}],
        "description": record["properties"]["llm_params"].get("description", ""),
    }
    global_condition = {
        "allOf": [{"$ref": "#/$defs/Condition"}],
        "properties": {"rect": {"const": list(FULL_RECT)}, META_KEY: {"$ref": "#/$defs/LayoutRecord"}},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "omost-bot layout file (format version 2)",
        "description": "A ComfyUI_omost canvas-conditioning list (global condition first, then far to near); "
        f"the first condition carries the {META_KEY!r} reproduction record, which ComfyUI ignores.",
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_REGIONS + 1,
        "prefixItems": [global_condition],
        "items": {"allOf": [{"$ref": "#/$defs/Condition"}], "not": {"required": [META_KEY]}},
        "$defs": {
            **defs,
            "Condition": condition,
            "LayoutRecord": record,
            "RenderParams": render,
            "LLMParams": llm,
        },
    }
