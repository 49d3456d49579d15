"""The layout file: both JSON forms, round trips, and one clear error for every bad file."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omost_engine.errors import OmostError
from omost_engine.layout import (
    DEFAULT_MAX_LAYOUT_BYTES,
    FORMAT,
    MAX_REGIONS,
    MAX_TEXT_CHARS,
    META_KEY,
    VERSION,
    Layout,
)
from omost_engine.params import RenderParams
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
    assert layout.notes and "bare ComfyUI_omost list" in layout.notes[0]  # what was assumed is said


def test_the_file_is_a_comfyui_list_carrying_the_record_in_its_first_condition() -> None:
    render = RenderParams(seed=12345, steps=12, method="area").to_dict()
    layout = Layout.loads(json.dumps(COMFY)).with_meta(render=render, sdxl="x", prompt="a cat", program="p")
    layout.warnings.append("location 'left' -> 'on the left'")
    doc = layout.to_json()
    assert isinstance(doc, list) and [{k: v for k, v in c.items() if k != META_KEY} for c in doc] == COMFY
    record = doc[0][META_KEY]
    assert record["format"] == FORMAT and record["version"] == VERSION == 2 and record["render"] == render
    assert record["warnings"] == ["location 'left' -> 'on the left'"] and META_KEY not in doc[1]
    again = Layout.loads(layout.dumps().encode("utf-8"))
    assert again == layout and again.meta["render"]["seed"] == 12345 and again.notes == []
    assert '"rect": [30, 90, 15, 75]' in layout.dumps()  # number lists stay on one line for editing


def test_with_meta_does_not_change_the_original() -> None:
    layout = Layout.loads(json.dumps(COMFY))
    other = layout.with_meta(sdxl="m")
    assert layout.meta == {} and other.meta == {"sdxl": "m"} and other.conditions == layout.conditions


OLD = {"format": FORMAT, "version": 1, "conditions": COMFY, "warnings": []}
BOT_V1 = {
    **OLD,
    "meta": {
        "job": 6,
        "prompt": "a cat",
        "seed": 77,
        "llm": "omost-llama",
        "sdxl": "realvis",
        "render": RenderParams(seed=77, steps=9, width=512, height=768).to_dict(),
    },
}
CLI_V1 = {
    **OLD,
    "meta": {
        "llm": "omost-llama",
        "prompt": "a cat",
        "llm_params": {"seed": 3, "temperature": 0.2},
        "render": {"model": "realvis", "seconds": 2.5, "params": RenderParams(seed=3, cfg=6.5).to_dict()},
    },
}
DOCS_V1 = {**OLD, "meta": {"seed": 12345, "size": [896, 1152]}}


@pytest.mark.parametrize(
    ("doc", "render", "meta", "note"),
    [
        (
            BOT_V1,
            {"seed": 77, "steps": 9, "width": 512},
            {"sdxl": "realvis", "job": 6, "llm": "omost-llama"},
            "the bot's shape",
        ),
        (
            CLI_V1,
            {"seed": 3, "cfg": 6.5},
            {"sdxl": "realvis", "seconds": 2.5, "llm_params": {"seed": 3, "temperature": 0.2}},
            "the CLI's shape",
        ),
        (DOCS_V1, {"seed": 12345, "width": 896, "height": 1152}, {}, "the documentation's shape"),
    ],
)
def test_version_1_files_are_upgraded_with_a_note(doc: dict, render: dict, meta: dict, note: str) -> None:
    layout = Layout.loads(json.dumps(doc))
    assert layout.to_comfyui() == COMFY
    assert {k: layout.meta["render"][k] for k in render} == render
    assert {k: layout.meta[k] for k in meta} == meta
    assert (
        len(layout.notes) == 1
        and "upgraded from layout format version 1" in layout.notes[0]
        and note in layout.notes[0]
    )
    written = Layout.loads(layout.dumps())  # written back in the new format, nothing lost
    assert written == layout and written.to_json()[0][META_KEY]["version"] == VERSION


def _record(**fields: object) -> str:
    return json.dumps([{**COMFY[0], META_KEY: {"format": FORMAT, "version": 2, **fields}}, COMFY[1]])


RECORD_BAD = [
    (_record(version=3), "written by a newer omost-bot (format version 3)"),
    (_record(render={"steps": 1000}), "omost_bot.render.steps must be from 1 to 100, not 1000"),
    (_record(render={"stepz": 10}), "unknown field 'stepz' in omost_bot.render"),
    (_record(render={"cfg": "high"}), "omost_bot.render.cfg must be a number from 1 to 32"),
    (_record(render={"method": "magic"}), "omost_bot.render.method must be omost or area"),
    (_record(render=5), "omost_bot.render must be an object"),
    (_record(seed=5), "unknown field 'seed' in omost_bot"),
    (_record(job=True), "omost_bot.job must be"),
    (_record(render={"seed": 1.5}), "omost_bot.render.seed must be a whole number"),
    (_record(format="x"), "omost_bot.format 'x'"),
    (json.dumps([COMFY[0], {**COMFY[1], META_KEY: {}}]), "only in the first condition"),
    (json.dumps({**OLD, "meta": {"render": 5}}), "meta.render 5 is not valid"),
    (json.dumps({**OLD, "meta": {"render": "fast"}}), "meta.render 'fast' is not valid"),
    (json.dumps({**OLD, "meta": {"render": {"params": 5}}}), "meta.render.params 5"),
    (json.dumps({**OLD, "meta": {"seed": -4}}), "meta.render.seed must be from 0 to 4294967295, not -4"),
    (json.dumps(COMFY).replace("[245, 245, 220]", "[245, 245, 2" + "0" * 5000 + "]"), "a 5001-digit number"),
    (
        json.dumps(COMFY).replace("[30, 90, 15, 75]", "[30, 90, 15, 7" + "5" * 4999 + "]"),
        "a 5000-digit number",
    ),
    (
        json.dumps({**OLD, "meta": {"seed": 7}}).replace('"seed": 7', '"seed": 1' + "0" * 4999),
        "a 5000-digit number",
    ),
    (_record(render={"seed": 10**400}), "a 401-digit number"),
    (json.dumps(COMFY).replace("[245, 245, 220]", "[245, 245, 1e999]"), "digit number|finite"),
    (json.dumps(COMFY).replace("[245, 245, 220]", "[245, 245, Infinity]"), "no NaN or Infinity"),
]


@pytest.mark.parametrize(("data", "fragment"), RECORD_BAD, ids=[f"record{i}" for i in range(len(RECORD_BAD))])
def test_every_bad_record_or_number_is_one_clear_line(data: str, fragment: str) -> None:
    """Issue 11's "Bad input", and issue 10 item 3: a 5000-digit number is one line, never a ValueError."""
    with pytest.raises(OmostError) as info:
        Layout.loads(data)
    message = str(info.value)
    assert __import__("re").search(
        fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\["), message
    )
    assert "\n" not in message and len(message) < 400 and info.value.parameter


def test_the_size_limit_is_the_one_given() -> None:
    """Issue 10 item 10: OMOST_MAX_LAYOUT_BYTES is THE limit; no hard cap below it in the loader."""
    big = json.dumps([{**COMFY[0], "suffixes": ["x" * 1900] * 60}] + [COMFY[1]] * 3)
    assert 256 * 1024 > len(big) > 100_000
    huge = json.dumps(
        [{**COMFY[0], "suffixes": ["x" * 1900] * 60}] + [{**COMFY[1], "suffixes": ["y" * 1900] * 60}] * 5
    )
    assert len(huge) > 600 * 1024 > DEFAULT_MAX_LAYOUT_BYTES
    assert Layout.loads(huge, max_bytes=1024 * 1024).conditions[5].suffixes[0] == "y" * 1900
    with pytest.raises(OmostError, match=f"allowed: at most {DEFAULT_MAX_LAYOUT_BYTES} bytes"):
        Layout.loads(huge)
    with pytest.raises(OmostError, match="allowed: at most 2048 bytes"):
        Layout.loads(big, max_bytes=2048)


def test_a_golden_layout_loaded_from_comfyui_json_sketches_like_the_original(golden) -> None:
    gold = golden("01")
    bare = parse_reply(gold["bot_response"]).to_comfyui()
    sketch = Layout.loads(json.dumps(bare)).sketch()
    assert (
        hashlib.sha256(sketch.tobytes()).hexdigest()
        == gold["process_output"]["initial_latent"]["sha256_c_order_bytes"]
    )


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
    (
        b"x" * (DEFAULT_MAX_LAYOUT_BYTES + 1),
        f"too large: {DEFAULT_MAX_LAYOUT_BYTES + 1} bytes; allowed: at most {DEFAULT_MAX_LAYOUT_BYTES}",
    ),
    (b"42", "layout 42 is not valid"),
    (b"[]", "conditions [] is not valid"),
    (json.dumps({"format": "other", "version": 1, "conditions": COMFY}), "format 'other'"),
    (json.dumps({"format": FORMAT, "version": 2, "conditions": COMFY}), "files are a JSON list"),
    (json.dumps({"format": FORMAT, "version": 3, "conditions": COMFY}), "newer omost-bot"),
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
    (
        '{"format": "omost-bot-layout", "version": 1, "conditions": '
        + json.dumps(COMFY)
        + ', "meta": {"x": NaN}}',
        "NaN",
    ),
    (
        json.dumps({"format": FORMAT, "version": 1, "conditions": COMFY, "meta": {"k": "\udc00"}}),
        "no lone surrogates",
    ),
]


@pytest.mark.parametrize(("data", "fragment"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_every_bad_file_is_one_clear_error(data: bytes | str, fragment: str) -> None:
    with pytest.raises(
        OmostError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ) as info:
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


def test_a_file_rendered_again_and_again_stays_within_its_declared_lists() -> None:
    layout = Layout.loads(json.dumps(COMFY)).with_meta(
        overrides=[f"seed: {i} -> {i + 1} (--seed)" for i in range(70)]
    )
    layout.warnings.extend(f"w{i}" for i in range(1200))
    again = Layout.loads(layout.dumps())
    assert again.meta["overrides"][-1] == "seed: 69 -> 70 (--seed)" and len(again.meta["overrides"]) == 64
    assert len(again.warnings) == 1000 and again.warnings[0] == "w0"
