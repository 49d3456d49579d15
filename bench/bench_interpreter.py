"""Speed of the safe interpreter against the original's ``exec``, and its worst cases.

    python bench/bench_interpreter.py [--repeat N]

1. Golden 01 (the README's dragon battle): ``interpret()`` (parse, allow-list check, evaluate,
   real Canvas validation and name resolution) against ``compile`` + ``exec`` of the same code
   with a stand-in Canvas that only records calls, as the original runs it. Same process, same
   run; prints the ratio (aim: <= 2x).
2. Worst cases: programs built to push each hard limit; prints how long each takes to be
   stopped (aim: every one under about 100 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omost_engine.errors import OmostError  # noqa: E402
from omost_engine.interpreter import DEFAULT_LIMITS, interpret  # noqa: E402

GOLDEN_01 = ROOT / "tests" / "fixtures" / "goldens" / "01_readme_dragon_battle.py"


class StandInCanvas:
    """The baseline's Canvas: records the calls, does nothing else."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def set_global_description(self, *args: object, **kwargs: object) -> None:
        self.calls.append(("global", args, kwargs))

    def add_local_description(self, *args: object, **kwargs: object) -> None:
        self.calls.append(("local", args, kwargs))


def run_exec(code: str) -> None:
    # The original's way (trusted fixture text only, for the comparison): compile, then exec.
    namespace: dict[str, object] = {"Canvas": StandInCanvas}
    exec(compile(code, "<golden>", "exec"), {}, namespace)  # noqa: S102
    assert isinstance(namespace["canvas"], StandInCanvas)


def run_interpreter(code: str) -> None:
    interpret(code)


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs (after one warm-up)."""
    return timed_pair(fn, fn, repeat)[0]


def timed_pair(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median seconds of each, measured alternately so that load from other processes hits both alike."""
    first(), second()
    a, b = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        a.append(middle - start)
        b.append(time.perf_counter() - middle)
    return statistics.median(a), statistics.median(b)


def _local(i: int, names: tuple[str, str, str, str]) -> str:
    loc, off, area, color = names
    return (
        f"canvas.add_local_description(location={loc!r}, offset={off!r}, area={area!r}, "
        f"distance_to_viewer={i + 1}.0, description='Object {i}.', detailed_descriptions=['A detail.'] * 50, "
        f"tags='t', atmosphere='a', style='s', quality_meta='q', HTML_web_color_name={color!r})"
    )


GLOBAL = "canvas = Canvas()\ncanvas.set_global_description('A scene.', ['Detail.'], 'tags', 'white')\n"
# Near-miss names that still resolve, so every one of them goes through difflib's full matching.
FUZZY = (
    "at the bottom right corner",
    "slightly to the right and up",
    "a very large horizontal area",
    "light sky blue",
)
WORST_CASES = {
    "busy loop (step limit)": "x = [str(i) for i in range(1000)]\nn = 0\nfor i in range(10000):\n    n = n + len(x) * 2 - (i in x)",
    "iteration limit": "n = 0\nfor i in range(10 ** 9):\n    n += 1",
    "text limit": "s = 'a' * 9000\nfor i in range(1000):\n    t = s + str(i)",
    "membership in big lists": "x = [str(i) * 9 for i in range(1000)]\nfor i in range(1000):\n    y = 'zzzz' in x",
    "substring search in long text": "h = 'a' * 9999\nn = 'a' * 99 + 'b'\nfor i in range(9000):\n    y = n in h",
    "set_global_description in a loop, big text": "big = ['d' * 1999] * 59\ncanvas = Canvas()\n"
    "for i in range(5000):\n    canvas.set_global_description('g' * 1999, big, 't' * 1999, 'red')",
    "set_global_description in a loop, fuzzy colour": "canvas = Canvas()\n"
    "for i in range(5000):\n    canvas.set_global_description('g', [], 't', f'light sky blu{i}')",
    "64 regions, fuzzy names, 50 sub-prompts each": GLOBAL + "\n".join(_local(i, FUZZY) for i in range(64)),
    "65 regions (region limit)": GLOBAL + f"for i in range(100):\n    {_local(0, FUZZY)}",
    "32 KiB of statements (source limit)": "x = 1\n" * (DEFAULT_LIMITS.max_source_chars // 6 - 1),
    "deep nesting": "x = " + "[" * 45 + "]" * 45,
    "nested comprehensions": "x = [[a * b for a in range(1000)] for b in range(1000)]",
    "big numbers": "x = 2 ** 63\nfor i in range(3000):\n    y = x * x // (x - i) + 1.5 ** 300",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=500)
    args = parser.parse_args()

    code = GOLDEN_01.read_text(encoding="utf-8")
    baseline, ours = timed_pair(lambda: run_exec(code), lambda: run_interpreter(code), args.repeat)
    print(f"golden 01 ({len(code)} chars), median of {args.repeat} alternating runs:")
    print(f"  compile + exec, stand-in canvas : {baseline * 1e3:8.3f} ms")
    print(f"  safe interpreter, real canvas   : {ours * 1e3:8.3f} ms")
    print(f"  ratio interpreter / exec        : {ours / baseline:8.2f}x  (aim <= 2x)")

    print("worst cases (time until the program finishes or is stopped):")
    worst = 0.0
    for name, source in WORST_CASES.items():

        def attempt(source: str = source) -> str:
            try:
                interpret(source)
                return "ran"
            except OmostError as exc:
                return f"stopped: {exc.message[:60]}"

        outcome = attempt()
        seconds = timed(attempt, max(3, args.repeat // 40))
        worst = max(worst, seconds)
        print(f"  {name:<46} {seconds * 1e3:8.2f} ms  {outcome}")
    print(f"  slowest worst case: {worst * 1e3:.1f} ms (aim < 100 ms)")


if __name__ == "__main__":
    main()
