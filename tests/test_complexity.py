"""No function in omost_engine/, bot/ or cogs/ above cyclomatic complexity 25 (radon's count: branches,
loops, boolean operators, comprehensions, except clauses, nested functions included), so each stays
readable and testable alone.
"""

from __future__ import annotations

from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("omost_engine", "bot", "cogs")
LIMIT = 25


def complexities(package: str) -> dict[str, int]:
    """``path:line name`` -> complexity for every function and method under ``package``."""
    found: dict[str, int] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for block in cc_visit(path.read_text(encoding="utf-8")):
            for item in (block, *getattr(block, "methods", ())):
                if type(item).__name__ == "Function":
                    found[f"{path.relative_to(ROOT)}:{item.lineno} {item.fullname}"] = item.complexity
    return found


def test_no_function_in_the_engine_bot_or_cogs_is_above_the_limit() -> None:
    measured = {name: value for package in CHECKED for name, value in complexities(package).items()}
    assert len(measured) > 300  # the walk found the engine's functions
    for package in CHECKED:  # and each package's
        assert any(name.startswith(f"{package}/") for name in measured), package
    too_complex = {name: value for name, value in measured.items() if value > LIMIT}
    assert not too_complex, f"split these (cyclomatic complexity above {LIMIT}): {too_complex}"


def test_the_count_sees_a_complex_function() -> None:
    branches = "\n".join(f"    if x == {i}:\n        return {i}" for i in range(LIMIT))
    (block,) = cc_visit(f"def f(x):\n{branches}\n    return -1\n")
    assert block.complexity == LIMIT + 1
