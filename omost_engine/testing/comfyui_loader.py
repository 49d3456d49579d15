"""For tests: ComfyUI_omost's loader rules, re-implemented, and the schema check of a layout file.

ComfyUI_omost's "Load Canvas Conditioning" node does ``json.loads`` and hands the value on; its sketch,
mask and encoding code then index it as a list of dicts and read exactly ``rect`` (4 ints, used as the
numpy slice ``[top:bottom, left:right]`` on 90x90), ``prefixes``, ``suffixes`` (lists of strings) and
``color`` (3 ints); element 0 is the global condition. A wrapped object fails there with ``KeyError: 0``.
Extra keys are never read. ``comfyui_conditions`` applies those rules strictly and returns what
ComfyUI would use, so a test can compare it with our own conditions.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from omost_engine.conditions import GRID, Condition

COMFYUI_FIELDS = ("rect", "prefixes", "suffixes", "color")


class ComfyUILoadError(AssertionError):
    """The file would fail in ComfyUI_omost."""


def comfyui_conditions(text: str) -> list[Condition]:
    """The conditions ComfyUI_omost would take from ``text``; ComfyUILoadError where it would fail."""
    value = json.loads(text)
    if not isinstance(value, list) or not value:
        raise ComfyUILoadError(
            f"not a non-empty JSON list (ComfyUI indexes value[0]): {type(value).__name__}"
        )
    conditions = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or any(key not in item for key in COMFYUI_FIELDS):
            raise ComfyUILoadError(f"element {index} lacks one of {COMFYUI_FIELDS} (a KeyError in ComfyUI)")
        rect, color = item["rect"], item["color"]
        if not (isinstance(rect, list) and len(rect) == 4 and all(type(v) is int for v in rect)):
            raise ComfyUILoadError(f"element {index}: rect must be 4 integers (numpy slicing), not {rect!r}")
        if not all(0 <= v <= GRID for v in rect):
            raise ComfyUILoadError(f"element {index}: rect outside the 90x90 grid: {rect!r}")
        if not (
            isinstance(color, list)
            and len(color) == 3
            and all(type(v) is int and 0 <= v <= 255 for v in color)
        ):
            raise ComfyUILoadError(f"element {index}: color must be 3 integers 0-255, not {color!r}")
        for key in ("prefixes", "suffixes"):
            if not (isinstance(item[key], list) and all(isinstance(s, str) for s in item[key])):
                raise ComfyUILoadError(f"element {index}: {key} must be a list of strings")
        mask = np.zeros((GRID, GRID), dtype=np.float32)
        top, bottom, left, right = rect
        mask[top:bottom, left:right] = 1.0  # what its area-mask code does; an empty box is a silent bug there
        if not mask.any():
            raise ComfyUILoadError(f"element {index}: rect {rect!r} is an empty box")
        conditions.append(
            Condition(
                rect=(top, bottom, left, right),
                prefixes=tuple(item["prefixes"]),
                suffixes=tuple(item["suffixes"]),
                color=(color[0], color[1], color[2]),
            )
        )
    if conditions[0].rect != (0, GRID, 0, GRID):
        raise ComfyUILoadError(f"element 0 is not the global condition: rect {list(conditions[0].rect)}")
    return conditions


def schema_errors(text: str) -> list[str]:
    """Where ``text`` breaks the published JSON Schema (``omost_engine/schema/layout.schema.json``)."""
    import jsonschema

    from omost_engine.schema import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(json.loads(text))
    ]


def check_project_file(text: str) -> Any:
    """Everything a layout file written by the project must satisfy: the schema, ComfyUI's loader, and
    the same conditions back through our own loader. Returns the parsed document."""
    from omost_engine.layout import Layout

    errors = schema_errors(text)
    assert not errors, errors[:5]
    ours = Layout.loads(text)
    assert comfyui_conditions(text) == ours.conditions
    assert ours.notes == [], ours.notes  # nothing had to be assumed: the file is in the current format
    return json.loads(text)
