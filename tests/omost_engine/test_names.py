"""Fuzzy name resolution: identical to the original (golden 61), corrections kept as warnings."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omost_engine.errors import OmostError
from omost_engine.names import resolve
from omost_engine.tables import TABLES

KINDS = {"location": "location", "offset": "offset", "area": "area", "color": "HTML_web_color_name"}


def _cases() -> list[tuple[str, dict]]:
    path = Path(__file__).resolve().parents[1] / "fixtures" / "goldens" / "61_name_resolution.json"
    results = json.loads(path.read_text(encoding="utf-8"))["results"]
    return [(kind, case) for kind, cases in results.items() for case in cases]


@pytest.mark.parametrize(
    ("kind", "case"), _cases(), ids=lambda v: v if isinstance(v, str) else repr(v["input"])
)
def test_resolution_matches_golden_61(kind: str, case: dict) -> None:
    parameter = KINDS[kind]
    table = TABLES[parameter]
    if case["ok"]:
        resolved = resolve(case["input"], table, parameter=parameter)
        assert resolved.name == case["resolved"]
        if case["stdout_lines"]:  # the original printed a correction: we keep it as a warning
            lowered = case["input"].lower()
            assert resolved.warning == f"{parameter} {lowered!r} -> '{case['resolved']}'"
        else:
            assert resolved.warning is None
    else:
        with pytest.raises(OmostError) as info:
            resolve(case["input"], table, parameter=parameter)
        err = info.value
        assert err.parameter == parameter and err.value == case["input"]
        assert parameter in str(err) and repr(case["input"].lower()) in str(err)
        assert err.allowed == ", ".join(table)


def test_error_lists_every_allowed_value_for_small_tables() -> None:
    with pytest.raises(OmostError) as info:
        resolve("somewhere", TABLES["location"], parameter="location")
    for name in TABLES["location"]:
        assert f"'{name}'" in str(info.value)


@pytest.mark.parametrize("value", [None, 3, ["on the left"], b"on the left"])
def test_non_strings_are_one_clear_error(value: object) -> None:
    with pytest.raises(OmostError, match="location must be a string"):
        resolve(value, TABLES["location"], parameter="location")


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(st.sampled_from(list(KINDS.values())), st.text(alphabet="abcdefghilmnoprstuvwy -", max_size=120))
def test_resolution_equals_difflib_for_any_input(parameter: str, text: str) -> None:
    # The long-input shortcut and the exact-key fast path must not change any answer.
    table = TABLES[parameter]
    expected = difflib.get_close_matches(text.lower(), list(table), n=1, cutoff=0.5)
    try:
        got = resolve(text, table, parameter=parameter).name
    except OmostError:
        got = None
    assert got == (expected[0] if expected else None)


@st.composite
def near_misses(draw: st.DrawFn) -> tuple[str, str]:
    """A table key with a few characters inserted, deleted or replaced: the inputs the matcher prunes hardest."""
    parameter = draw(st.sampled_from(list(KINDS.values())))
    chars = list(draw(st.sampled_from(list(TABLES[parameter]))))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(chars)))
        op = draw(st.integers(0, 2))
        letter = draw(st.sampled_from("abcdefghilmnoprstuy -"))
        if op == 0:
            chars.insert(at, letter)
        elif chars:
            if op == 1:
                del chars[min(at, len(chars) - 1)]
            else:
                chars[min(at, len(chars) - 1)] = letter
    return parameter, "".join(chars)


@settings(max_examples=500, derandomize=True, deadline=None, database=None)
@given(near_misses())
def test_near_misses_resolve_exactly_as_difflib(case: tuple[str, str]) -> None:
    parameter, text = case
    table = TABLES[parameter]
    expected = difflib.get_close_matches(text.lower(), list(table), n=1, cutoff=0.5)
    try:
        got = resolve(text, table, parameter=parameter).name
    except OmostError:
        got = None
    assert got == (expected[0] if expected else None)
