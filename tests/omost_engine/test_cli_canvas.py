"""``omost-bot canvas`` and ``omost-bot layout``, run in-process through the real entry point."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from omost_engine.layout import Layout
from omost_engine.reply import parse_reply


@pytest.fixture()
def reply_file(tmp_path: Path, golden) -> Path:
    path = tmp_path / "reply.md"
    path.write_text(golden("01")["bot_response"], encoding="utf-8")
    return path


def test_canvas_prints_the_layout_json(reply_file: Path, golden, capsys) -> None:
    assert main(["canvas", str(reply_file)]) == 0
    out = capsys.readouterr().out
    assert Layout.loads(out) == parse_reply(golden("01")["bot_response"])


def test_canvas_reads_a_bare_program_from_stdin(golden_program, monkeypatch, capsys) -> None:
    program = golden_program("10").encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(program)))
    assert main(["canvas", "-"]) == 0
    layout = Layout.loads(capsys.readouterr().out)
    assert len(layout.conditions) == 7 and "location 'on the upper left' -> 'on the left'" in layout.warnings


def test_canvas_can_print_the_bare_comfyui_list(reply_file: Path, capsys) -> None:
    assert main(["canvas", "--comfyui", str(reply_file)]) == 0
    items = json.loads(capsys.readouterr().out)
    assert isinstance(items, list) and items[0]["rect"] == [0, 90, 0, 90] and len(items) == 5


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "30"),  # golden 30: unknown location
        ("```python\nimport os\nos.system('echo hacked')\n```", "line 1: an import is not allowed"),
        ("no code here", "the reply contains no canvas program"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_an_invalid_program_exits_2_with_one_line(content, fragment, tmp_path: Path, golden, capsys) -> None:
    path = tmp_path / "bad.txt"
    if content is None:
        content = golden(fragment)["bot_response"]
        fragment = "location 'somewhere' is not a known location"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["canvas", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err.count("\n") == 1
        and captured.err.startswith("omost-bot canvas: ")
        and fragment in captured.err
    )


def test_a_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["canvas", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err


@pytest.fixture()
def layout_file(tmp_path: Path, golden) -> Path:
    path = tmp_path / "layout.json"
    path.write_text(parse_reply(golden("01")["bot_response"]).dumps(), encoding="utf-8")
    return path


def test_layout_draws_the_sketch_pixel_identical_at_90(
    layout_file: Path, tmp_path: Path, golden, decode_rle
) -> None:
    out = tmp_path / "sketch.png"
    assert main(["layout", str(layout_file), "--out", str(out), "--size", "90x90"]) == 0
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(pixels, decode_rle(golden("01")["process_output"]["initial_latent"]))


def test_layout_draws_larger_sketches_and_masks(layout_file: Path, tmp_path: Path) -> None:
    sketch, masks = tmp_path / "big.png", tmp_path / "masks.png"
    assert main(["layout", str(layout_file), "--out", str(sketch), "--size", "360x180"]) == 0
    assert main(["layout", str(layout_file), "--out", str(masks), "--masks"]) == 0
    assert Image.open(sketch).size == (360, 180) and Image.open(masks).size == (720, 720)
    assert not np.array_equal(np.asarray(Image.open(masks))[:180, :360], np.asarray(Image.open(sketch)))


def test_layout_accepts_a_bare_comfyui_list(tmp_path: Path, layout_file: Path) -> None:
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(Layout.loads(layout_file.read_text()).to_comfyui()))
    out = tmp_path / "bare.png"
    assert main(["layout", str(bare), "--out", str(out)]) == 0
    assert Image.open(out).size == (90, 90)


@pytest.mark.parametrize(
    ("content", "args", "fragment"),
    [
        ("[1, 2", [], "not valid JSON"),
        ('[{"rect": [0, 90, 0, 80], "prefixes": ["x"], "suffixes": []}]', [], "no global condition"),
        (None, ["--size", "huge"], "size 'huge' is not valid"),
    ],
)
def test_layout_errors_exit_2_with_one_line(
    content, args, fragment, tmp_path: Path, layout_file: Path, capsys
) -> None:
    path = layout_file
    if content is not None:
        path = tmp_path / "bad.json"
        path.write_text(content)
    assert main(["layout", str(path), "--out", str(tmp_path / "x.png"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("omost-bot layout: ") and fragment in err
    assert not (tmp_path / "x.png").exists()


def test_layout_reads_stdin(layout_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(layout_file.read_bytes())))
    out = tmp_path / "stdin.png"
    assert main(["layout", "-", "--out", str(out), "--masks", "--size", "300x200"]) == 0
    assert Image.open(out).size == (300, 200)


def test_the_commands_are_registered_with_help() -> None:
    from bot.cli import build_parser

    help_text = build_parser().format_help()
    assert "canvas" in help_text and "layout" in help_text


def test_layout_comfyui_prints_the_bare_list_of_any_layout_file(layout_file: Path, capsys) -> None:
    """Issue 11: `omost-bot layout FILE --comfyui` gives the bare list ComfyUI_omost's loader takes."""
    from omost_engine.testing.comfyui_loader import comfyui_conditions

    assert main(["layout", str(layout_file), "--comfyui"]) == 0
    out = capsys.readouterr().out
    assert comfyui_conditions(out) == Layout.loads(layout_file.read_bytes()).conditions
    assert "omost_bot" not in out and isinstance(json.loads(out), list)
    assert main(["layout", str(layout_file)]) == 2
    assert "give --out PREVIEW.png, --comfyui, or both" in capsys.readouterr().err


def test_canvas_writes_a_file_the_schema_and_comfyui_accept(tmp_path: Path, golden, capsys) -> None:
    from omost_engine.testing.comfyui_loader import check_project_file

    reply = tmp_path / "reply.md"
    reply.write_text(golden("01")["bot_response"], encoding="utf-8")
    assert main(["canvas", str(reply)]) == 0
    check_project_file(capsys.readouterr().out)
