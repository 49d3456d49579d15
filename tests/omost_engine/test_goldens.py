"""Every golden canvas case of the original, run through parse_reply (the safe interpreter)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from omost_engine.conditions import GRID
from omost_engine.errors import OmostError
from omost_engine.reply import parse_reply

VALID = ("01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "20", "21")


@pytest.mark.parametrize("number", VALID)
def test_conditions_equal_the_original(number: str, golden) -> None:
    gold = golden(number)
    layout = parse_reply(gold["bot_response"])
    bag = gold["process_output"]["bag_of_conditions"]
    state = gold["canvas_state_after_process"]
    assert len(layout.conditions) == len(bag) == len(state["components_sorted"]) + 1
    for cond, entry in zip(layout.conditions, bag, strict=True):
        assert list(cond.prefixes) == entry["prefixes"]
        assert list(cond.suffixes) == entry["suffixes"]
        assert list(cond.rect) == entry["mask"]["rect"]
        mask = cond.mask()
        assert mask.dtype == np.float32 and mask.shape == (GRID, GRID)
        assert float(mask.sum()) == entry["mask"]["sum"]
    colors = [state["global_color_rgb"]] + [c["color_rgb"] for c in state["components_sorted"]]
    assert [list(c.color) for c in layout.conditions] == colors
    assert layout.conditions[0].rect == (0, GRID, 0, GRID)


@pytest.mark.parametrize("number", VALID)
def test_sketch_is_byte_identical_to_the_original(number: str, golden, decode_rle) -> None:
    latent = golden(number)["process_output"]["initial_latent"]
    sketch = parse_reply(golden(number)["bot_response"]).sketch()
    assert sketch.dtype == np.uint8 and sketch.shape == (GRID, GRID, 3)
    assert hashlib.sha256(sketch.tobytes()).hexdigest() == latent["sha256_c_order_bytes"]
    assert np.array_equal(sketch, decode_rle(latent))


@pytest.mark.parametrize("number", VALID)
def test_every_printed_correction_is_a_warning(number: str, golden) -> None:
    gold = golden(number)
    warnings = parse_reply(gold["bot_response"]).warnings
    printed = [
        re.fullmatch(r"Automatically corrected \[(.*)\] -> \[(.*)\]\.", line).groups()
        for line in gold["stdout_lines"]
    ]
    assert [(w.split(" ", 1)[1]) for w in warnings] == [f"{src!r} -> '{dst}'" for src, dst in printed]


def test_golden_10_warnings_name_the_parameter(golden) -> None:
    warnings = parse_reply(golden("10")["bot_response"]).warnings
    assert "location 'on the upper left' -> 'on the left'" in warnings
    assert "HTML_web_color_name 'dark slate gray' -> 'darkslategray'" in warnings
    assert "offset 'slightly to the top-right' -> 'slightly to the right'" in warnings


def test_golden_22_code_without_a_fence_is_accepted(golden) -> None:
    gold = golden("22")
    assert gold["ok"] is False  # the original rejected it only for the missing fence
    layout = parse_reply(gold["bot_response"])
    assert layout.conditions[0].prefixes == ("Code without a markdown fence.",)
    assert layout.conditions[0].suffixes == ("nofence.",) and layout.conditions[0].color == (255, 0, 0)


def test_golden_23_canvas_without_spaces_is_accepted(golden) -> None:
    gold = golden("23")
    assert gold["ok"] is False
    layout = parse_reply(gold["bot_response"])
    assert layout.conditions[0].prefixes == ("Canvas created without the exact spaced literal.",)
    assert len(layout.conditions) == 1


def test_golden_24_overwritten_canvas_stays_an_error(golden) -> None:
    with pytest.raises(OmostError, match="makes no canvas.*'canvas' holds a str") as info:
        parse_reply(golden("24")["bot_response"])
    assert info.value.parameter == "canvas"


# case -> (parameter named by the error, the bad value as shown in the message)
ERRORS = {
    "30": ("location", "'somewhere'"),
    "31": ("offset", "'far left'"),
    "32": ("area", "'huge'"),
    "33": ("HTML_web_color_name", "'burgundy'"),
    "34": ("HTML_web_color_name", "'#ff0000'"),
    "35": ("set_global_description", None),
    "36": ("distance_to_viewer", "got 0;"),
    "37": ("distance_to_viewer", "-1.5"),
    "38": ("distance_to_viewer", "'5.0'"),
    "39": ("distance_to_viewer", "nan"),
    "40": ("detailed_descriptions", "'Object detail as a plain string.'"),
    "41": ("detailed_descriptions", "('Tuple detail.',)"),
    "42": ("detailed_descriptions", "['ok', 42]"),
    "43": ("tags", "['object', 'thing']"),
    "44": ("tags", "['test', 'scene']"),
    "45": ("description", "None"),
}


@pytest.mark.parametrize("number", sorted(ERRORS))
def test_invalid_programs_give_one_clear_error(number: str, golden, golden_program) -> None:
    gold = golden(number)
    assert gold["ok"] is False
    parameter, shown = ERRORS[number]
    with pytest.raises(OmostError) as info:
        parse_reply(gold["bot_response"])
    err = info.value
    message = str(err)
    assert err.parameter == parameter and parameter in message
    assert "allowed:" in message
    if shown is not None:
        assert shown in message
    if gold["error"]["phase"] == "from_bot_response":
        # The error names the line of the canvas call that failed.
        lines = golden_program(number).splitlines()
        method = (
            "set_global_description"
            if gold["error"]["message"].startswith("Global")
            else "add_local_description"
        )
        if "[burgundy]" in gold["error"]["message"]:
            method = "set_global_description"
        expected = next(i for i, line in enumerate(lines, 1) if method in line)
        assert err.line == expected and message.startswith(f"line {expected}: ")
