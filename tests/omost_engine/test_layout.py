"""The layout file: both JSON forms, round trips, and one clear error for every bad file."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omost_engine.errors import OmostError
from omost_engine.layout import FORMAT, MAX_LAYOUT_BYTES, MAX_REGIONS, MAX_TEXT_CHARS, Layout
from omost_engine.reply import parse_reply

# The example from ComfyUI_omost's documentation of its canvas JSON.
COMFY = [
    {"rect": [0, 90, 0, 90], "prefixes": ["A cat on a sofa."], "suffixes": ["A cosy living room.", "cat, sofa, warm light."],
     "color": [245, 245, 220]},
    {"rect": [30, 90, 15, 75], "prefixes": ["A cat on a sofa.", "A ginger cat."],
     "suffixes": ["The cat is curled up asleep.", "cat, ginger, fluffy.", "Calm.", "Photo.", "High quality."],
     "color": [255, 165, 0]},
]  # fmt: skip


def test_a_bare_comfyui_list_loads_and_writes_back_unchanged() -> None:
    layout = Layout.loads(json.dumps(COMFY))
    assert layout.to_comfyui() == COMFY and layout.warnings == [] and layout.meta == {}
    assert layout.conditions[1].rect == (30, 90, 15, 75) and layout.regions == layout.conditions[1:]


def test_the_wrapped_form_round_trips_with_meta_and_warnings() -> None:
    layout = Layout.loads(json.dumps(COMFY)).with_meta(seed=12345, size=[896, 1152], models={"sdxl": "x"})
    layout.warnings.append("location 'left' -> 'on the left'")
    doc = layout.to_json()
    assert doc["format"] == FORMAT and doc["version"] == 1 and doc["conditions"] == COMFY
    again = Layout.loads(layout.dumps().encode("utf-8"))
    assert again == layout and again.meta["seed"] == 12345
    assert '"rect": [30, 90, 15, 75]' in layout.dumps()  # number lists stay on one line for editing


def test_with_meta_does_not_change_the_original() -> None:
    layout = Layout.loads(json.dumps(COMFY))
    other = layout.with_meta(seed=1)
    assert layout.meta == {} and other.meta == {"seed": 1} and other.conditions == layout.conditions


def test_a_golden_layout_loaded_from_comfyui_json_sketches_like_the_original(golden) -> None:
    gold = golden("01")
    bare = parse_reply(gold["bot_response"]).to_comfyui()
    sketch = Layout.loads(json.dumps(bare)).sketch()
    assert hashlib.sha256(sketch.tobytes()).hexdigest() == gold["process_output"]["initial_latent"]["sha256_c_order_bytes"]


def test_a_missing_colour_defaults_to_white_with_a_warning() -> None:
    items = [dict(COMFY[0]), {k: v for k, v in COMFY[1].items() if k != "color"}]
    layout = Layout.loads(json.dumps(items))
    assert layout.conditions[1].color == (255, 255, 255)
    assert layout.warnings == ["conditions[1] has no color; using white [255, 255, 255] for the sketch"]


def test_extra_keys_of_a_condition_are_ignored_and_a_bom_is_accepted() -> None:
    items = [{**COMFY[0], "mask": "ignored"}, COMFY[1]]
    assert Layout.loads(b"\xef\xbb\xbf" + json.dumps(items).encode()).to_comfyui() == COMFY


def _with(index: int, **changes: object) -> list[dict]:
    items = [dict(c) for c in COMFY]
    items[index].update(changes)
    return items


BAD = [
    (b"\xff\xfe[]", "not UTF-8"),
    (b"[{", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "nests JSON too deeply|not valid JSON"),
    (b"x" * (MAX_LAYOUT_BYTES + 1), f"too large: {MAX_LAYOUT_BYTES + 1} bytes; allowed: at most {MAX_LAYOUT_BYTES}"),
    (b"42", "layout 42 is not valid"),
    (b"[]", "conditions [] is not valid"),
    (json.dumps({"format": "other", "version": 1, "conditions": COMFY}), "format 'other'"),
    (json.dumps({"format": FORMAT, "version": 2, "conditions": COMFY}), "newer omost-bot"),
    (json.dumps({"format": FORMAT, "version": "1", "conditions": COMFY}), "version '1'"),
    (json.dumps({"format": FORMAT, "version": 1, "conditions": COMFY, "extra": 1}), "key 'extra'"),
    (json.dumps({"format": FORMAT, "version": 1, "conditions": COMFY, "meta": []}), "meta []"),
    (json.dumps({"format": FORMAT, "version": 1, "conditions": COMFY, "warnings": [1]}), "warnings [1]"),
    (json.dumps(["x"]), "conditions[0] 'x'"),
    (json.dumps(_with(1, rect=[30, 90, 15])), "conditions[1].rect [30, 90, 15]"),
    (json.dumps(_with(1, rect=[30, 90, 15, 91])), "0 <= left < right <= 90"),
    (json.dumps(_with(1, rect=[30, 30, 15, 75])), "a non-empty box"),
    (json.dumps(_with(1, rect=[-1, 30, 15, 75])), "conditions[1].rect"),
    (json.dumps(_with(1, rect=[30.0, 90, 15, 75])), "4 integers"),
    (json.dumps(_with(1, rect=[True, 90, 15, 75])), "4 integers"),
    (json.dumps(_with(1, prefixes="A cat.")), "conditions[1].prefixes 'A cat.'"),
    (json.dumps(_with(1, suffixes=[1])), "conditions[1].suffixes [1]"),
    (json.dumps(_with(1, prefixes=[], suffixes=[])), "at least one prefix or suffix"),
    (json.dumps(_with(1, suffixes=["x" * (MAX_TEXT_CHARS + 1)])), f"at most {MAX_TEXT_CHARS} characters"),
    (json.dumps(_with(1, suffixes=["x"] * 65)), "at most 64 items"),
    (json.dumps(_with(1, color=[255, 0])), "3 integers [r, g, b], each 0-255"),
    (json.dumps(_with(1, color=[255, 0, 256])), "3 integers [r, g, b], each 0-255"),
    (json.dumps(_with(1, color="red")), "conditions[1].color 'red'"),
    (json.dumps(_with(0, rect=[0, 90, 0, 89])), "no global condition"),
    (json.dumps([COMFY[0]] + [COMFY[1]] * (MAX_REGIONS + 1)), f"too many conditions: {MAX_REGIONS + 2}"),
    (json.dumps([{"prefixes": ["x"], "suffixes": []}]), "rect, prefixes and suffixes are required"),
    (json.dumps(_with(1, prefixes=["\ud800"])), "no lone surrogates"),
    ('{"format": "omost-bot-layout", "version": 1, "conditions": ' + json.dumps(COMFY) + ', "meta": {"x": NaN}}',
     "no NaN or Infinity"),
    (json.dumps({"format": FORMAT, "version": 1, "conditions": COMFY, "meta": {"k": "\udc00"}}), "no lone surrogates"),
]


@pytest.mark.parametrize(("data", "fragment"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_every_bad_file_is_one_clear_error(data: bytes | str, fragment: str) -> None:
    with pytest.raises(OmostError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")) as info:
        Layout.loads(data)
    message = str(info.value)
    assert "allowed" in message and "\n" not in message and info.value.parameter


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
condition_like = st.fixed_dictionaries(
    {"rect": st.just([0, 90, 0, 90]) | st.lists(st.integers(-2, 92), min_size=3, max_size=5), "prefixes": st.lists(st.text(max_size=5), max_size=2),
     "suffixes": st.lists(st.text(max_size=5), max_size=2)},
    optional={"color": st.lists(st.integers(-1, 256), min_size=2, max_size=4), "mask": json_values},
)  # fmt: skip
documents = st.one_of(
    json_values,
    st.lists(condition_like, max_size=4),
    st.fixed_dictionaries({"format": st.just(FORMAT), "version": st.sampled_from([1, 2, "1"]),
                           "conditions": st.lists(condition_like, max_size=3)},
                          optional={"meta": json_values, "warnings": json_values}),
)  # fmt: skip


def test_any_json_is_accepted_and_round_trips_or_is_one_clear_error() -> None:
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=600, derandomize=True, deadline=None, database=None)
    @given(documents)
    def check(doc: object) -> None:
        try:
            layout = Layout.loads(json.dumps(doc))
        except OmostError as exc:
            assert str(exc) and "\n" not in str(exc)
            outcomes["refused"] += 1
            return
        outcomes["accepted"] += 1
        assert layout.conditions[0].rect == (0, 90, 0, 90)
        assert Layout.loads(layout.dumps()) == layout
        assert layout.sketch().shape == (90, 90, 3)

    check()
    assert outcomes["accepted"] > 20 and outcomes["refused"] > 100, outcomes
