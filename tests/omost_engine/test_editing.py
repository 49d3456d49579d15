"""Layout editing in the canvas's own terms (omost_engine/editing.py), checked against the real canvas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from omost_engine.canvas import box
from omost_engine.editing import (
    CanvasSpec,
    add_region,
    closer,
    delete_region,
    farther,
    lines,
    set_box,
    set_color,
    set_text,
)
from omost_engine.errors import OmostError
from omost_engine.interpreter import interpret
from omost_engine.layout import MAX_REGIONS, Layout
from omost_engine.reply import extract_code, parse_reply
from omost_engine.tables import AREAS, COLORS, LOCATIONS, OFFSETS

GOLDENS = Path(__file__).resolve().parents[1] / "fixtures" / "goldens"


def _valid_goldens() -> list[str]:
    names = []
    for path in sorted(GOLDENS.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "bot_response" in doc and doc.get("ok"):
            names.append(path.stem)
    return names


VALID = _valid_goldens()


def _reply(name: str) -> str:
    return json.loads((GOLDENS / f"{name}.json").read_text(encoding="utf-8"))["bot_response"]


def _spec(name: str = "01_readme_dragon_battle") -> CanvasSpec:
    return CanvasSpec.from_program(extract_code(_reply(name)))


def _conditions(program: str) -> list:
    return interpret(program).process().conditions


def test_the_goldens_the_original_accepts_are_all_here() -> None:
    assert len(VALID) >= 12 and "01_readme_dragon_battle" in VALID and "09_same_distance_ties" in VALID


@pytest.mark.parametrize("name", VALID)
def test_program_layout_edit_program_round_trip(name: str) -> None:
    original = parse_reply(_reply(name))
    spec = CanvasSpec.from_layout(original.with_meta(program=extract_code(_reply(name))))
    # Unedited: the regenerated program makes exactly the same conditions.
    assert _conditions(spec.program()) == original.conditions
    # Edited: the program makes exactly the edited layout, and reads back to the same spec.
    edit = set_color(spec, 0, "navy")
    if spec.regions:
        edit = set_box(edit.spec, 1, location="on the right", area="a small vertical area")
        edit = set_text(edit.spec, edit.region, description="A red kite", tags="kite, red")
        edit = closer(edit.spec, edit.region) if len(spec.regions) > 1 else edit
    edit = add_region(edit.spec, description="A small moon", location="on the top-right", color="ivory")
    program = edit.spec.program()
    assert _conditions(program) == edit.spec.layout().conditions
    assert CanvasSpec.from_program(program) == edit.spec
    assert parse_reply(edit.spec.reply()).conditions == edit.spec.layout().conditions


@pytest.mark.parametrize("name", VALID)
def test_a_layout_without_its_program_is_inferred_to_the_same_conditions(name: str) -> None:
    layout = parse_reply(_reply(name))
    spec = CanvasSpec.from_layout(Layout.loads(layout.dumps()))
    assert spec.layout().conditions == layout.conditions
    assert spec.notes == ()


def test_inference_notes_a_box_and_colour_the_canvas_cannot_make() -> None:
    layout = parse_reply(_reply("04_single_local_center"))
    odd = Layout.from_json([c.to_json() for c in layout.conditions])
    doc = odd.to_comfyui()
    doc[1]["rect"] = [3, 41, 7, 52]
    doc[1]["color"] = [250, 1, 2]
    spec = CanvasSpec.from_layout(Layout.from_json(doc))
    assert any("not a canvas box" in n for n in spec.notes)
    assert any("red" in n and "[250, 1, 2]" in n for n in spec.notes)
    assert spec.region(1).color == "red"
    assert spec.region(1).rect in {box(loc, off, ar) for loc in LOCATIONS for off in OFFSETS for ar in AREAS}


def test_a_stale_program_in_meta_is_ignored_for_the_layout() -> None:
    layout = parse_reply(_reply("01_readme_dragon_battle"))
    stale = layout.with_meta(program=extract_code(_reply("04_single_local_center")))
    assert CanvasSpec.from_layout(stale).layout().conditions == layout.conditions


def test_location_offset_area_give_the_canvas_rect() -> None:
    spec = _spec()
    for location in LOCATIONS:
        for offset in ("no offset", "slightly to the lower-right"):
            for area in ("a small square area", "a large vertical area"):
                edit = set_box(spec, 2, location=location, offset=offset, area=area)
                region = edit.spec.region(edit.region)
                assert (
                    edit.spec.layout().conditions[edit.region].rect
                    == box(location, offset, area)
                    == region.rect
                )


def test_a_near_miss_name_is_corrected_with_a_note_and_a_bad_one_refused() -> None:
    spec = _spec()
    edit = set_box(spec, 1, location="on the upper left")
    assert edit.spec.region(1).location == "on the left" and "'on the left'" in edit.note
    with pytest.raises(OmostError, match="location 'somewhere' is not a known location"):
        set_box(spec, 1, location="somewhere")
    with pytest.raises(OmostError, match="global description covers the whole canvas"):
        set_box(spec, 0, area="a small square area")


def test_closer_and_farther_change_the_drawing_order_as_the_canvas_sorts() -> None:
    spec = _spec()
    n = len(spec.regions)
    first = spec.region(1)
    edit = closer(spec, 1)
    assert edit.region == 2 and edit.spec.region(2).description == first.description
    layout = edit.spec.layout()
    assert layout.conditions[2].prefixes[-1] == spec.layout().conditions[1].prefixes[-1]
    assert layout.conditions[1].prefixes[-1] == spec.layout().conditions[2].prefixes[-1]
    assert farther(edit.spec, 2).spec.layout().conditions == spec.layout().conditions
    with pytest.raises(OmostError, match="already the farthest"):
        farther(spec, 1)
    with pytest.raises(OmostError, match="already the nearest"):
        closer(spec, n)


def test_closer_past_tied_and_infinite_distances() -> None:
    spec = _spec("09_same_distance_ties")
    regions = list(spec.regions)
    regions[0] = regions[0].__class__(**{**regions[0].__dict__, "distance": math.inf})
    spec = CanvasSpec(spec.global_, tuple(regions))
    before = [c.prefixes[-1] for c in spec.layout().regions]
    for number in range(1, len(before)):
        moved = closer(spec, number).spec
        after = [c.prefixes[-1] for c in moved.layout().regions]
        expected = list(before)
        expected[number - 1], expected[number] = expected[number], expected[number - 1]
        assert after == expected
        assert _conditions(moved.program()) == moved.layout().conditions


def test_text_edits_and_their_refusals() -> None:
    spec = _spec()
    edit = set_text(
        spec,
        2,
        description="A sleeping dragon",
        detailed_descriptions=lines("Green scales.\n\n Big wings. "),
        atmosphere="Quiet",
        style="Oil painting",
        quality_meta="Best",
    )
    cond = edit.spec.layout().conditions[2]
    assert cond.prefixes[-1] == "A sleeping dragon."
    assert cond.suffixes[:2] == ("Green scales.", "Big wings.")
    assert cond.suffixes[-3:] == ("Quiet.", "Oil painting.", "Best.")
    with pytest.raises(OmostError, match="description of region 2 is empty"):
        set_text(spec, 2, description=" . ")
    with pytest.raises(OmostError, match="5000 characters long"):
        set_text(spec, 2, tags="x" * 5000)
    with pytest.raises(OmostError, match="atmosphere is not a text field of the global description"):
        set_text(spec, 0, atmosphere="Calm")
    with pytest.raises(OmostError, match="76 CLIP tokens long"):
        set_text(
            spec, 1, detailed_descriptions=["ok", "y"], count_tokens=lambda text: 76 if text == "y." else 3
        )
    glob = set_text(spec, 0, description="A quiet valley", tags="valley").spec.layout()
    assert glob.conditions[0].prefixes == ("A quiet valley.",)
    assert all(c.prefixes[0] == "A quiet valley." for c in glob.regions)


def test_colour_by_name_uses_the_canvas_fuzzy_rule() -> None:
    spec = _spec()
    edit = set_color(spec, 1, "Transparent")
    assert edit.spec.region(1).color == "seagreen" and edit.note == "colour 'transparent' -> 'seagreen'"
    assert edit.spec.layout().conditions[1].color == COLORS["seagreen"]
    assert set_color(spec, 0, "RED").note is None
    with pytest.raises(OmostError, match="HTML_web_color_name 'qqqqqqqqqqqqqqqqqqqqqqqqqqq' is not a known"):
        set_color(spec, 1, "qqqqqqqqqqqqqqqqqqqqqqqqqqq")


def test_add_and_delete_regions_within_the_limits() -> None:
    spec = _spec("04_single_local_center")
    with pytest.raises(OmostError, match="last region"):
        delete_region(spec, 1)
    with pytest.raises(OmostError, match="global description cannot be deleted"):
        delete_region(spec, 0)
    edit = add_region(spec)
    assert edit.region == 2 == len(edit.spec.layout().regions)
    assert edit.spec.layout().conditions[2].rect == box("in the center", "no offset", "a small square area")
    assert delete_region(edit.spec, 2).spec.layout().conditions == spec.layout().conditions
    full = spec
    while len(full.regions) < MAX_REGIONS:
        full = add_region(full).spec
    with pytest.raises(OmostError, match=f"allowed: at most {MAX_REGIONS}"):
        add_region(full)
    with pytest.raises(OmostError, match="there is no region 99"):
        set_color(spec, 99, "red")


def test_a_refused_edit_changes_nothing_and_state_survives_json() -> None:
    spec = _spec()
    before = spec.to_json()
    with pytest.raises(OmostError):
        set_text(spec, 1, description="")
    assert spec.to_json() == before
    assert CanvasSpec.from_json(json.loads(json.dumps(before))) == spec
    tampered = json.loads(json.dumps(before))
    tampered["regions"][0]["area"] = 7
    with pytest.raises(OmostError):
        CanvasSpec.from_json(tampered)


def test_labels_for_the_region_menu() -> None:
    spec = _spec("04_single_local_center")
    assert spec.label(0).startswith("0 · global — ")
    region = spec.region(1)
    assert spec.label(1).startswith(f"1 · {region.location}")
    assert region.area in spec.label(1)


def test_the_clip_token_limit_with_a_real_clip_tokenizer(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from omost_engine.render.prompt_encoding import CONTENT_TOKENS, PromptEncoder
    from omost_engine.testing.tiny_sdxl import write_clip_vocab

    vocab, merges = write_clip_vocab(tmp_path)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    encoder = PromptEncoder.__new__(PromptEncoder)  # only the tokenizer is needed to count
    encoder.tokenizer = tokenizer
    spec = _spec()
    words = ["a"]
    while encoder.count_tokens(" ".join(words) + ".") < CONTENT_TOKENS:  # with the period safe_str adds
        words.append("a")
    fits = " ".join(words)
    assert encoder.count_tokens(fits + ".") == CONTENT_TOKENS
    edit = set_text(spec, 1, tags=fits, count_tokens=encoder.count_tokens)
    assert edit.spec.layout().conditions[1].suffixes[-4] == fits + "."
    with pytest.raises(OmostError, match="76 CLIP tokens long"):
        set_text(spec, 1, tags=fits + " a", count_tokens=encoder.count_tokens)
