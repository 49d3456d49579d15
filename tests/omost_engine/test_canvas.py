"""Canvas semantics: normalisation, validation order, sorting, odd call orders, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omost_engine.canvas import Canvas, safe_str
from omost_engine.errors import OmostError
from omost_engine.layout import MAX_LAYOUT_BYTES, MAX_TEXT_CHARS, Layout

LOCAL = dict(
    location="in the center",
    offset="no offset",
    area="a small square area",
    distance_to_viewer=5.0,
    description="A cat.",
    detailed_descriptions=["A ginger cat."],
    tags="cat",
    atmosphere="calm",
    style="photo",
    quality_meta="good",
    HTML_web_color_name="orange",
)


def _global(canvas: Canvas, description: str = "A room.") -> None:
    canvas.set_global_description(description, ["A cosy room."], "room, warm", "beige")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Is it cold?", "Is it cold?."), ("Wow!!", "Wow!!."), ("", "."), ("...", "."), ("\tX\n", "\tX\n."),
     (" , a cat. ,", "a cat."), ("a, b, c", "a, b, c.")],
)  # fmt: skip
def test_safe_str_matches_the_original(text: str, expected: str) -> None:
    assert safe_str(text) == expected


@settings(max_examples=200, derandomize=True, database=None)
@given(st.text(max_size=40))
def test_safe_str_is_idempotent(text: str) -> None:
    assert safe_str(safe_str(text)) == safe_str(text)


def test_a_local_description_becomes_a_condition_with_the_global_prefix() -> None:
    canvas = Canvas()
    _global(canvas)
    canvas.add_local_description(**LOCAL)
    layout = canvas.process()
    glob, cat = layout.conditions
    assert glob.rect == (0, 90, 0, 90) and glob.prefixes == ("A room.",)
    assert glob.suffixes == ("A cosy room.", "room, warm.") and glob.color == (245, 245, 220)
    assert cat.rect == (20, 70, 20, 70) and cat.prefixes == ("A room.", "A cat.")
    assert cat.suffixes == ("A ginger cat.", "cat.", "calm.", "photo.", "good.")
    assert cat.color == (255, 165, 0)
    assert cat.mask().sum() == 50 * 50 and layout.warnings == []


def test_positional_arguments_bind_in_the_original_order() -> None:
    canvas = Canvas()
    canvas.set_global_description("A room.", [], "room", "white")
    canvas.add_local_description(*LOCAL.values())
    assert canvas.process().conditions[1].prefixes == ("A room.", "A cat.")


def test_sorting_is_far_to_near_and_stable_for_ties() -> None:
    canvas = Canvas()
    _global(canvas)
    for name, distance in [("a", 2.0), ("b", 5), ("c", 2.0), ("d", math.inf), ("e", True), ("f", 5.0)]:
        canvas.add_local_description(**{**LOCAL, "description": name, "distance_to_viewer": distance})
    order = [c.prefixes[-1] for c in canvas.process().conditions[1:]]
    assert order == ["d.", "b.", "f.", "a.", "c.", "e."]


@pytest.mark.parametrize("distance", [0, -1, -0.5, math.nan, "5", None, [1.0], -math.inf])
def test_distance_must_be_a_positive_number(distance: object) -> None:
    canvas = Canvas()
    _global(canvas)
    with pytest.raises(
        OmostError, match="distance_to_viewer of the local description 'A cat.' must be a positive"
    ):
        canvas.add_local_description(**{**LOCAL, "distance_to_viewer": distance})


def test_validation_order_is_the_originals() -> None:
    canvas = Canvas()
    _global(canvas)
    # Type checks first (description, distance, detailed, tags, atmosphere, style, quality_meta) ...
    bad = {**LOCAL, "location": "nowhere at all", "distance_to_viewer": 0, "tags": 1, "style": None}
    with pytest.raises(OmostError) as info:
        canvas.add_local_description(**bad)
    assert info.value.parameter == "distance_to_viewer"
    with pytest.raises(OmostError) as info:
        canvas.add_local_description(**{**bad, "distance_to_viewer": 1})
    assert info.value.parameter == "tags"
    # ... then names: location, offset, area, colour.
    with pytest.raises(OmostError) as info:
        canvas.add_local_description(
            **{**LOCAL, "area": "xyz", "HTML_web_color_name": "xyz", "offset": "xyz"}
        )
    assert info.value.parameter == "offset"
    with pytest.raises(OmostError) as info:
        canvas.set_global_description(None, "x", [], "xyz")
    assert info.value.parameter == "description"
    assert canvas.regions == []  # a failed call adds nothing


def test_a_local_before_the_global_still_gets_the_global_prefix_with_a_warning() -> None:
    canvas = Canvas()
    canvas.add_local_description(**LOCAL)
    canvas.add_local_description(**{**LOCAL, "description": "A dog."})
    _global(canvas)
    layout = canvas.process()
    assert [c.prefixes for c in layout.conditions[1:]] == [("A room.", "A cat."), ("A room.", "A dog.")]
    assert len(layout.warnings) == 1 and "before set_global_description" in layout.warnings[0]


def test_the_global_set_twice_uses_the_last_call_everywhere_with_a_warning() -> None:
    canvas = Canvas()
    _global(canvas, "First.")
    canvas.add_local_description(**LOCAL)
    canvas.set_global_description("Second.", ["Later."], "tags", "black")
    canvas.add_local_description(**{**LOCAL, "distance_to_viewer": 1.0})
    layout = canvas.process()
    assert layout.conditions[0].prefixes == ("Second.",) and layout.conditions[0].color == (0, 0, 0)
    assert all(c.prefixes[0] == "Second." for c in layout.conditions[1:])
    assert layout.warnings == ["set_global_description was called more than once; the last call is used"]


def test_no_global_description_is_a_clear_error() -> None:
    canvas = Canvas()
    canvas.add_local_description(**LOCAL)
    with pytest.raises(OmostError, match="never calls canvas.set_global_description") as info:
        canvas.process()
    assert info.value.parameter == "set_global_description"


def test_region_limit() -> None:
    canvas = Canvas(max_regions=3)
    _global(canvas)
    for _ in range(3):
        canvas.add_local_description(**LOCAL)
    with pytest.raises(OmostError, match="too many local descriptions: more than 3; allowed: at most 3"):
        canvas.add_local_description(**LOCAL)


def test_text_limits() -> None:
    canvas = Canvas()
    with pytest.raises(OmostError, match=f"at most {MAX_TEXT_CHARS}"):
        canvas.set_global_description("x" * (MAX_TEXT_CHARS + 1), [], "t", "red")
    with pytest.raises(OmostError, match="items; allowed: at most"):
        canvas.set_global_description("x", ["d"] * 100, "t", "red")


def test_a_layout_too_large_for_the_file_limit_is_refused_at_process() -> None:
    canvas = Canvas()
    _global(canvas, "g" * MAX_TEXT_CHARS)
    for _ in range(20):
        canvas.add_local_description(**{**LOCAL, "detailed_descriptions": ["d" * MAX_TEXT_CHARS] * 10})
    with pytest.raises(OmostError, match=f"allowed: at most {MAX_LAYOUT_BYTES} bytes"):
        canvas.process()


def test_process_is_repeatable_and_round_trips_through_json() -> None:
    canvas = Canvas()
    _global(canvas)
    canvas.add_local_description(**LOCAL)
    canvas.add_local_description(**{**LOCAL, "location": "On The Left", "HTML_web_color_name": "navy blue"})
    first, second = canvas.process(), canvas.process()
    assert first == second
    loaded = Layout.loads(first.dumps())
    assert loaded == first and np.array_equal(loaded.sketch(), first.sketch())
    assert first.warnings == ["HTML_web_color_name 'navy blue' -> 'navyblue'"]  # case alone is no correction


def test_the_largest_canvas_the_limits_allow_still_loads_back() -> None:
    canvas = Canvas()
    canvas.set_global_description("A scene.", ["d"] * 59, "t", "off white")
    fuzzy = {"location": "at the bottom right corner", "offset": "slightly left", "area": "a big square area",
             "HTML_web_color_name": "light sky blue"}  # fmt: skip
    for i in range(64):
        canvas.add_local_description(
            **{**LOCAL, **fuzzy, "description": f"Object {i}.", "detailed_descriptions": ["x"] * 59}
        )
    layout = canvas.process()
    assert len(layout.conditions) == 65 and len(layout.warnings) == 1 + 64 * 4
    assert Layout.loads(layout.dumps()) == layout


def test_text_that_cannot_be_written_as_utf8_is_refused() -> None:
    canvas = Canvas()
    with pytest.raises(OmostError, match="cannot be written as UTF-8") as info:
        canvas.set_global_description("A \ud800 scene.", [], "t", "red")
    assert info.value.parameter == "description"
    _global(canvas)
    with pytest.raises(OmostError, match="cannot be written as UTF-8"):
        canvas.add_local_description(**{**LOCAL, "detailed_descriptions": ["ok", "\udfff"]})


def test_work_counts_text_and_fuzzy_matches() -> None:
    from omost_engine.canvas import FUZZY_MATCH_WORK, TEXT_CHARS_PER_WORK

    canvas = Canvas()
    canvas.set_global_description("g" * 1000, ["d" * 500] * 2, "t" * 100, "red")
    assert canvas.work == 2100 // TEXT_CHARS_PER_WORK
    canvas.set_global_description("g", [], "t", "light sky blue")  # one fuzzy colour
    assert canvas.work == 2100 // TEXT_CHARS_PER_WORK + FUZZY_MATCH_WORK
