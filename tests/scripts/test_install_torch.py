"""``scripts/install-torch`` (run by scripts/test): where the CPU wheel of torch comes from.

A stand-in ``pip`` first on PATH records each call and answers as a given machine's pip would; the
script itself runs for real in bash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-torch"
PYTORCH_CPU = "https://download.pytorch.org/whl/cpu"

# The stand-in pip: logs its arguments, then succeeds only when $PIP_SUCCEEDS_WHEN (a bash pattern)
# matches them, like a pip that finds the wheel only from some sources.
FAKE_PIP = """#!/usr/bin/env bash
echo "$*" >> "$PIP_LOG"
[[ "$*" == $PIP_SUCCEEDS_WHEN ]] && exit 0
echo "ERROR: No matching distribution found for $3" >&2
exit 1
"""


def run_install(tmp_path: Path, succeeds_when: str, **env: str) -> tuple[int, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    pip = bin_dir / "pip"
    pip.write_text(FAKE_PIP)
    pip.chmod(0o755)
    log = tmp_path / "pip.log"
    log.unlink(missing_ok=True)
    environ = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PIP_LOG": str(log),
        "PIP_SUCCEEDS_WHEN": succeeds_when,
        **env,
    }
    done = subprocess.run(
        [shutil.which("bash") or "bash", str(SCRIPT)], env=environ, capture_output=True, text=True, timeout=60
    )
    return done.returncode, log.read_text().splitlines() if log.exists() else [], done.stdout


def test_a_cpu_wheel_from_pips_own_configuration_is_used_as_before(tmp_path: Path) -> None:
    # This machine and CI: pip's find-links folder holds torch-2.13.0+cpu; nothing else is asked.
    status, calls, out = run_install(tmp_path, "install -q torch==2.13.0+cpu")
    assert status == 0
    assert calls == ["install -q torch==2.13.0+cpu"]
    assert "from pip's configured sources" in out


def test_a_pip_that_reaches_only_the_public_index_gets_the_cpu_build_from_pytorch(tmp_path: Path) -> None:
    # The public index has no "+cpu" build (its Linux torch==2.13.0 is the CUDA one): PyTorch's CPU index.
    status, calls, out = run_install(tmp_path, f"*--extra-index-url {PYTORCH_CPU}*")
    assert status == 0
    assert calls == [
        "install -q torch==2.13.0+cpu",
        f"install -q torch==2.13.0+cpu --extra-index-url {PYTORCH_CPU}",
    ]
    assert f"torch 2.13.0+cpu from {PYTORCH_CPU}" in out


def test_without_any_cpu_build_the_plain_version_is_installed(tmp_path: Path) -> None:
    status, calls, _ = run_install(tmp_path, "install -q torch==2.13.0")  # macOS: PyPI's wheel is the CPU one
    assert status == 0 and calls[-1] == "install -q torch==2.13.0" and len(calls) == 3


def test_omost_torch_index_names_the_source(tmp_path: Path) -> None:
    index = "https://mirror.example/whl/cu128"
    status, calls, out = run_install(tmp_path, "*", OMOST_TORCH_INDEX=index)
    assert status == 0
    assert calls == [f"install -q torch==2.13.0 --extra-index-url {index}"]
    assert f"from {index}" in out


def test_a_failing_source_fails_the_script(tmp_path: Path) -> None:
    status, calls, _ = run_install(tmp_path, "never", OMOST_TORCH_INDEX="https://mirror.example/none")
    assert status != 0 and len(calls) == 1


def test_scripts_test_installs_torch_through_the_script_before_the_project() -> None:
    text = (REPO / "scripts" / "test").read_text()
    assert "bash scripts/install-torch" in text
    assert text.index("bash scripts/install-torch") < text.index("pip install -q -e '.[test]' torch==2.13.0")
