"""``omost-bot render`` end to end on a golden layout with the tiny model folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from omost_engine.layout import Layout
from omost_engine.params import RenderParams
from omost_engine.testing.comfyui_loader import check_project_file
from omost_engine.testing.tiny_sdxl import TinySDXLPaths

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


@pytest.fixture(scope="module")
def golden_layout_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Golden 09's conditions as the bare ComfyUI_omost list a user would paste."""
    bag = json.loads((GOLDENS / "09_same_distance_ties.json").read_text())["process_output"][
        "bag_of_conditions"
    ]
    items = [
        {
            "rect": c["mask"]["rect"],
            "prefixes": c["prefixes"],
            "suffixes": c["suffixes"],
            "color": [40 * i, 100, 200],
        }
        for i, c in enumerate(bag)
    ]
    path = tmp_path_factory.mktemp("layouts") / "cats.json"
    path.write_text(json.dumps(items))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["render", *argv])
    return status, capsys.readouterr().err


def test_render_writes_image_masks_and_a_reproducible_layout(
    golden_layout_file: Path, tiny_sdxl: TinySDXLPaths, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cats"
    status, err = run(
        capsys,
        str(golden_layout_file),
        "--out",
        str(out),
        "--model",
        str(tiny_sdxl.folder),
        "--size",
        "256x256",
        "--steps",
        "2",
        "--seed",
        "7",
        "--method",
        "area",
        "--overlap",
        "overlay",
        "--region-strength",
        "0.7",
        "--positive",
        "photo",
        "--device",
        "cpu",
    )
    assert status == 0, err
    image = Image.open(out / "image.png")
    assert image.size == (256, 256)
    assert Image.open(out / "masks.png").size == (256, 256)
    saved = Layout.loads((out / "layout.json").read_bytes())
    assert saved.conditions == Layout.loads(golden_layout_file.read_bytes()).conditions
    assert saved.meta["sdxl"] == str(tiny_sdxl.folder)
    check_project_file((out / "layout.json").read_text())  # the schema, ComfyUI's loader, our loader
    params = RenderParams.from_dict(saved.meta["render"])
    assert (params.width, params.height, params.steps, params.seed) == (256, 256, 2, 7)
    assert (params.method, params.overlap, params.region_strength, params.positive) == (
        "area",
        "overlay",
        0.7,
        "photo",
    )
    # The written layout alone reproduces the image: model and parameters come from its meta.
    again = tmp_path / "again"
    status, err = run(capsys, str(out / "layout.json"), "--out", str(again), "--quiet", "--device", "cpu")
    assert status == 0, err
    assert err == ""
    assert np.array_equal(np.asarray(Image.open(again / "image.png")), np.asarray(image))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--width", "100"], "width must be from 256 to 2048"),
        (["--size", "huge"], "size must be WIDTHxHEIGHT"),
        (["--hr-scale", "5"], "hr_scale"),
        (["--model", "does-not-exist.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(
    argv: list[str], message: str, golden_layout_file: Path, tiny_sdxl: TinySDXLPaths, tmp_path: Path, capsys
) -> None:
    base = [str(golden_layout_file), "--out", str(tmp_path / "x"), "--quiet"]
    if "--model" not in argv:
        base += ["--model", str(tiny_sdxl.folder)]
    status, err = run(capsys, *base, *argv)
    assert status == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("omost-bot render: ")


def test_bad_layout_files_are_exit_2(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    status, err = run(capsys, str(broken), "--out", str(tmp_path / "o"))
    assert status == 2 and "not valid JSON" in err and err.count("\n") == 1
    status, err = run(capsys, str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"))
    assert status == 2 and "cannot read" in err


def test_flags_override_the_file_and_the_override_is_recorded(
    golden_layout_file: Path, tiny_sdxl: TinySDXLPaths, tmp_path: Path, capsys, monkeypatch
) -> None:
    first = tmp_path / "first"
    status, err = run(
        capsys,
        str(golden_layout_file),
        "--out",
        str(first),
        "--model",
        str(tiny_sdxl.folder),
        "--size",
        "256x256",
        "--steps",
        "2",
        "--seed",
        "7",
        "--device",
        "cpu",
    )
    assert status == 0 and "note: a bare ComfyUI_omost list" in err  # what was assumed is said
    # From stdin, with one flag over the file's settings: the new file says what was overridden.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO((first / "layout.json").read_bytes())))
    second = tmp_path / "second"
    status, err = run(capsys, "-", "--out", str(second), "--seed", "8", "--quiet", "--device", "cpu")
    assert status == 0, err
    saved = Layout.loads((second / "layout.json").read_bytes())
    assert saved.meta["render"]["seed"] == 8 and saved.meta["render"]["steps"] == 2
    assert saved.meta["overrides"] == ["seed: 7 -> 8 (--seed)"] and saved.meta["sdxl"] == str(
        tiny_sdxl.folder
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            lambda doc: {
                "format": "omost-bot-layout",
                "version": 1,
                "conditions": doc,
                "meta": {"render": 5},
            },
            "meta.render 5 is not valid",
        ),
        (
            lambda doc: {
                "format": "omost-bot-layout",
                "version": 1,
                "conditions": doc,
                "meta": {"render": "x"},
            },
            "meta.render 'x' is not valid",
        ),
        (
            lambda doc: [
                {
                    **doc[0],
                    "omost_bot": {"format": "omost-bot-layout", "version": 2, "render": {"hr_steps": 500}},
                }
            ],
            "omost_bot.render.hr_steps must be from 1 to 100, not 500",
        ),
    ],
)
def test_bad_render_settings_in_the_file_are_exit_2(
    content, message: str, golden_layout_file: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content(json.loads(golden_layout_file.read_text()))))
    status, err = run(capsys, str(path), "--out", str(tmp_path / "o"))
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_file_is_read_up_to_the_configured_limit_only(tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue 10 item 15: no unbounded read (render /dev/zero), and OMOST_MAX_LAYOUT_BYTES is the limit."""
    status, err = run(capsys, "/dev/zero", "--out", str(tmp_path / "o"))
    assert status == 2 and "too large; allowed: at most 524288 bytes" in err
    monkeypatch.setenv("OMOST_MAX_LAYOUT_BYTES", "2048")
    status, err = run(capsys, "/dev/zero", "--out", str(tmp_path / "o"))
    assert status == 2 and "at most 2048 bytes" in err
    monkeypatch.setenv("OMOST_MAX_LAYOUT_BYTES", "lots")
    status, err = run(capsys, "/dev/zero", "--out", str(tmp_path / "o"))
    assert status == 2 and "OMOST_MAX_LAYOUT_BYTES must be a whole number from 1024" in err
