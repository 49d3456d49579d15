"""The layout file's JSON Schema is the declarations' and every file the project writes satisfies it, and
ComfyUI_omost's loader rules (re-implemented) accept every such file and give back the same conditions."""

from __future__ import annotations

import json

import pytest

from omost_engine.layout import META_KEY, Layout
from omost_engine.params import LLMParams, RenderParams
from omost_engine.reply import parse_reply
from omost_engine.schema import SCHEMA_PATH, schema_text
from omost_engine.testing.comfyui_loader import (
    ComfyUILoadError,
    check_project_file,
    comfyui_conditions,
    schema_errors,
)


def test_the_schema_in_the_repository_is_the_one_the_declarations_give() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), "run: python -m omost_engine.schema"


def test_a_layout_with_every_field_is_valid_and_loads_in_comfyui(golden) -> None:
    layout = parse_reply(golden("01")["bot_response"]).with_meta(
        render=RenderParams(seed=9, hr_scale=1.5, initial_latent_denoise=0.97).to_dict(),
        sdxl="realvis",
        llm="omost-llama",
        llm_params=LLMParams(seed=9).to_dict(),
        prompt="a dragon",
        program="canvas = Canvas()",
        job=3,
        seconds=1.25,
        overrides=["steps: 25 -> 10 (--steps)"],
    )
    doc = check_project_file(layout.dumps())
    assert doc[0][META_KEY]["render"]["hr_scale"] == 1.5 and len(doc) == len(layout.conditions)
    bare = json.dumps(layout.to_comfyui())
    assert comfyui_conditions(bare) == layout.conditions and not schema_errors(bare)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d[0][META_KEY]["render"].update(steps=0), "steps"),
        (lambda d: d[0][META_KEY].update(version=3), "version"),
        (lambda d: d[0][META_KEY].update(extra=1), "extra"),
        (lambda d: d[1].update(rect=[0, 95, 0, 10]), "rect"),
        (lambda d: d[0].pop("color"), "color"),
        (lambda d: d[1].update({META_KEY: {"format": "omost-bot-layout", "version": 2}}), "1"),
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(golden, change, where: str) -> None:
    doc = parse_reply(golden("01")["bot_response"]).with_meta(render=RenderParams().to_dict()).to_json()
    change(doc)
    text = json.dumps(doc)
    assert any(where in error for error in schema_errors(text)), schema_errors(text)


def test_the_comfyui_rules_refuse_the_old_wrapped_object(golden) -> None:
    conditions = parse_reply(golden("01")["bot_response"]).to_comfyui()
    old = {"format": "omost-bot-layout", "version": 1, "conditions": conditions, "meta": {}}
    with pytest.raises(ComfyUILoadError, match="KeyError|list"):
        comfyui_conditions(json.dumps(old))
    assert Layout.loads(json.dumps(old)).to_comfyui() == conditions  # ours still reads it


def test_every_golden_canvas_writes_a_file_comfyui_and_the_schema_accept(golden) -> None:
    for name in ("01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "20", "21"):
        layout = parse_reply(golden(name)["bot_response"])
        # check_project_file asserts the schema, ComfyUI's rules and the round trip.
        document = check_project_file(layout.dumps())
        assert isinstance(document, list) and len(document) == len(layout.conditions), name
