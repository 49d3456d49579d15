"""``python scripts/demo_tiny.py DIR``: runs as a plain file and shows a program with regions, masks and all."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "demo_tiny.py"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_tiny", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_as_a_file_the_script_finds_the_project_without_an_installed_package(tmp_path: Path) -> None:
    # -S: no site-packages, so nothing installed (and no active environment) can provide `bot`; the
    # script itself must put the repository on sys.path, as `python scripts/demo_tiny.py` needs.
    probe = (
        f"import runpy, sys; runpy.run_path({str(SCRIPT)!r}, run_name='demo'); "
        "import bot, omost_engine; print(bot.__file__); print(omost_engine.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        str(REPO / "bot" / "__init__.py"),
        str(REPO / "omost_engine" / "__init__.py"),
    ]


@pytest.mark.slow
def test_the_demo_draws_regions_and_writes_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = load_demo()
    assert demo.main([str(tmp_path), "--steps", "1"]) == 0
    turn = tmp_path / "turn-1"
    layout = json.loads((turn / "layout.json").read_text())  # the ComfyUI_omost list: global first
    regions = len(layout) - 1
    assert regions > 0
    assert "canvas.add_local_description(" in (turn / "reply.md").read_text()
    image, masks = Image.open(turn / "image.png"), Image.open(turn / "masks.png")
    assert image.size == masks.size == (256, 256)
    assert len(set(masks.convert("RGB").getdata())) > 2  # the region boxes are drawn, not a blank sheet
    assert (turn / "conversation.json").is_file()
    err = capsys.readouterr().err
    assert f"The demo wrote {turn.resolve()}:" in err
    assert f"the global description and {regions} regions" in err
