"""The shape of bot/ and cogs/ (issue 13): behaviour lives in the cog, services take narrow parts, and
the imports have no cycle. Read from the source, so a new import that breaks the shape fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSERS = {"bot.bot", "bot.commands", "bot.cli"}  # they build the bot; everything else is below it


def imports() -> dict[str, set[str]]:
    """module -> the bot/ and cogs/ modules it imports (also under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in sorted([*ROOT.glob("bot/**/*.py"), *ROOT.glob("cogs/**/*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found |= {name for name in names if name.split(".")[0] in ("bot", "cogs") and name != "bot"}
        graph[module] = found
    return graph


def test_the_walk_sees_the_modules() -> None:
    graph = imports()
    assert {"bot.bot", "bot.service", "bot.messenger", "bot.presenter", "bot.job_store", "cogs.omost"} <= set(
        graph
    )


def test_nothing_below_the_composers_imports_the_bot() -> None:
    importers = {module for module, found in imports().items() if "bot.bot" in found}
    assert importers <= COMPOSERS | {"cogs.omost"}, importers - COMPOSERS


def test_nothing_in_bot_imports_a_cog() -> None:
    graph = imports()
    offenders = {
        m: sorted(d for d in found if d.startswith("cogs"))
        for m, found in graph.items()
        if m.startswith("bot")
    }
    assert not {m: d for m, d in offenders.items() if d}


def test_the_imports_have_no_cycle() -> None:
    graph = imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep in graph and dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
