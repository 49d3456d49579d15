"""omost_engine/ passes mypy in strict mode and bot/ and cogs/ pass it with their own settings (the
configuration is ``[tool.mypy]`` in pyproject.toml, and scripts/test runs the same check before the tests),
and every ``type: ignore`` left in them names its error code and says why.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("omost_engine", "bot", "cogs")
# "# type: ignore[code]  # why": the code keeps the silence narrow, the reason lets a reader judge it.
EXPLAINED_IGNORE = re.compile(r"type:\s*ignore\[[a-z0-9-]+(?:,\s*[a-z0-9-]+)*\]\s*#\s*\S")


def unexplained_ignores(source: str) -> list[int]:
    """Lines of ``source`` whose ``type: ignore`` comment lacks an error code or a reason."""
    lines = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        is_ignore = token.type == tokenize.COMMENT and "type: ignore" in token.string
        if is_ignore and not EXPLAINED_IGNORE.search(token.string):
            lines.append(token.start[0])
    return lines


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    found: dict[str, list[int]] = {}
    scanned: dict[str, int] = {}
    for package in CHECKED:
        for path in sorted((ROOT / package).rglob("*.py")):
            scanned[package] = scanned.get(package, 0) + 1
            bad = unexplained_ignores(path.read_text(encoding="utf-8"))
            if bad:
                found[str(path.relative_to(ROOT))] = bad
    # the walk found each package's modules
    assert scanned["omost_engine"] > 50 and scanned["bot"] > 20 and scanned["cogs"] > 1, scanned
    assert not found, f"give each type: ignore an error code and a '# why' comment: {found}"


def test_the_ignore_check_sees_a_bare_or_unexplained_ignore() -> None:
    assert unexplained_ignores("x = f()  # type: ignore\n") == [1]
    assert unexplained_ignores("x = f()  # type: ignore[arg-type]\n") == [1]
    assert unexplained_ignores("x = 1\ny = f()  # type: ignore[arg-type]  # f's stub is too narrow\n") == []
    assert unexplained_ignores("s = '# type: ignore'\n") == []  # text in a string is no comment


def test_the_engine_is_configured_strict_without_a_global_ignore() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert "ignore_missing_imports" not in config  # only per third-party module, in the overrides
    strict_modules = [o["module"] for o in config["overrides"] if o.get("strict")]
    assert ["omost_engine", "omost_engine.*"] in strict_modules
    assert "mypy omost_engine bot cogs" in (ROOT / "scripts" / "test").read_text(encoding="utf-8")


def test_the_engine_bot_and_cogs_pass_mypy() -> None:
    # Quick after scripts/test's own run (mypy reuses its .mypy_cache); a minute or two from cold.
    # Strict on omost_engine only (the overrides); bot/ and cogs/ are checked with the global settings.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *CHECKED], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout
