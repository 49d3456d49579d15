"""Generated and hostile programs against the interpreter (>= 10,000 per run, derandomized).

For every program: the only exception is OmostError (one line of text); no audited operation
(import, open, exec, os.system, socket ...) happens while it runs; the counters stay within the
limits; no value outside the allow-list reaches the program's variables; and a canvas that
processes gives a layout that loads back from its own JSON.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from omost_engine.canvas import LOCAL_PARAMS, Canvas
from omost_engine.conditions import Condition
from omost_engine.errors import OmostError
from omost_engine.interpreter import SOURCE_NAME, Builtin, Interpreter, _CanvasClass, interpret_partial
from omost_engine.layout import Layout
from omost_engine.tables import AREAS, COLORS, LOCATIONS, OFFSETS

FUZZ = settings(
    derandomize=True,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


class AuditRecorder:
    """Collects audit events raised while ``active`` (the hook itself cannot be removed)."""

    HARMLESS = {"compile", "builtins.id"}

    def __init__(self) -> None:
        self.active = False
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        # The hook is process-wide: threads left by other tests (database, HTTP, tokenizer workers) open
        # files too. Only the thread that runs the interpreter counts.
        self.thread_id = threading.get_ident()

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event in self.HARMLESS or threading.get_ident() != self.thread_id:
            return
        # CPython looks up the source "file" to quote a SyntaxError line; ours has no file.
        if event == "open" and args and args[0] == SOURCE_NAME:
            return
        self.events.append((event, args))


@pytest.fixture(scope="module")
def audit() -> AuditRecorder:
    recorder = AuditRecorder()
    sys.addaudithook(recorder)
    return recorder


_ALLOWED_VALUES = (type(None), bool, int, float, str, range, Canvas, _CanvasClass, Builtin)


def _only_allowed(value: Any) -> bool:
    """Every value reachable from ``value`` has an allowed type (iterative: values may nest deeply)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple | dict):
            if id(item) not in seen:  # shared sub-lists are checked once
                seen.add(id(item))
                stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
        elif not isinstance(item, _ALLOWED_VALUES):
            return False
    return True


def run_checked(source: str, audit: AuditRecorder) -> str:
    interp = Interpreter()
    audit.events.clear()
    audit.active = True
    try:
        interp.run(source)
        outcome = "ok"
    except OmostError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        outcome = "error"
    finally:
        audit.active = False
    assert audit.events == [], audit.events
    limits = interp.limits
    assert interp.steps <= limits.max_steps + max(limits.max_items, limits.canvas_call_steps) + 10
    assert interp.iterations <= limits.max_iterations + 1
    assert interp.chars <= limits.max_total_chars + limits.max_string_chars
    assert len(interp.canvases) <= limits.max_canvases
    assert all(_only_allowed(v) for v in interp.variables.values())
    canvas = interp.variables.get("canvas")
    if outcome == "ok" and isinstance(canvas, Canvas):
        try:
            layout = canvas.process()
        except OmostError:
            return outcome
        assert Layout.loads(layout.dumps()) == layout
    return outcome


# ----------------------------------------------------------------------------- strategies

HOSTILE = [
    "import os", "__import__('os').system('id')", "().__class__.__bases__[0].__subclasses__()",
    "[c for c in ().__class__.__base__.__subclasses__()]", "getattr(__builtins__, 'open')('/etc/passwd')",
    "canvas.__dict__", "canvas.add_local_description.__self__", "f'{canvas.__class__}'", "type(canvas)",
    "'{0.__class__}'.format(1)", "vars()", "dir()", "breakpoint()", "exit()", "input()", "open('x', 'w')",
    "exec('import os')", "eval('1+1')", "compile('1', 'f', 'eval')", "globals()['__builtins__']",
    "canvas.set_global_description.__func__.__globals__", "Canvas.__init__.__globals__",
    "lambda: os", "(lambda: 0).__code__", "memoryview(b'x')", "bytearray(10**9)", "'a' * 10**10",
    "[0] * 10**9", "9 ** 9 ** 9", "x = [x for x in range(10**9)]", "while True: pass",
    "for i in range(10**9): pass", "f'{1:>999999999}'", "round(1, -10**18)", "int('9' * 100000)",
    "str(10**5000)", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "-" * 500 + "1", "x = (" * 50 + ")" * 50, "import sys; sys.setrecursionlimit(10**9)",
    "class A: pass", "def f(): return f()", "try: pass\nexcept: pass", "with open('x') as f: pass",
    "global canvas", "del canvas", "x = yield", "async def f(): pass", "await x", "x := 1",
    "canvas = Canvas()\ncanvas = 'gone'", "Canvas = len", "len = Canvas", "canvas = Canvas\ncanvas()",
    "x = {}; x['a'] = 1", "x = []; x.append(x)", "x = [1]; x[0] = x", "for x in x: pass",
    "s = 'a' * 9999\nt = [s + str(i) for i in range(1000)]", "x = 5.5 in range(10**18)",
    "x = [0] * 1000\ny = [x] * 1000\nz = y == y", "x = {i: i for i in range(5000)}",
    "x = max(range(10**18))", "x = min([[1], [2]])", "x = sorted([3, 1])", "x = zip(range(10**18))",
    "x = enumerate(range(10**18))", "x = len(range(10**30))", "x = range(10**30)[10**29]",
    "x = 'abc'[10**30]", "x = 1e308 * 1e308", "x = float('1e999') - float('1e999')", "x = (-1) ** 0.5",
    "x = 10 ** -10**18", "x = 2 ** 64", "x = -(2 ** 63) * 2", "x = f'{10**18!r:>9999}' * 2",
    "\x00", "x = '\ud800'", "canvas = Canvas()\ncanvas.set_global_description('\ud800', [], '', 'red')",
    "x = f'{10 ** 18:c}'", "x = []\nfor i in range(5000):\n    x = [x]\ncanvas = Canvas()\ncanvas.set_global_description(x, x, x, x)", "break", "continue", "if True:\n    break", "x = [1][0:1, 1]", "x = [1][(0, 1)]", "for i in [1]:\n    if i:\n        break", "x = 1 if True else __import__('os')", "x = [__builtins__ for _ in [1]]",
    *(f"x = {n}\ny = {use}" for n in ("0x" + "f" * 4000, "9" * 4000, "9" * 5000)
      for use in ("str(x)", "float(x)", "f'{x}'", "[1][x]", "x < 1", "x == 1", "x + 0.5")),
    "canvas = Canvas()\ncanvas.set_global_description('a', [], '', 0x" + "f" * 4000 + ")",
]  # fmt: skip

# Integer literals too large to print (past Python's 4300-digit limit once in decimal) or to parse.
HUGE_INTS = ["0x" + "f" * 4000, "9" * 4000, "-0x" + "7" * 3000, "9" * 4400, "0b" + "1" * 20000]

NAMES = ["x", "y", "i", "canvas", "Canvas", "len", "range", "enumerate", "zip", "min", "max", "round", "str",
         "int", "float"]  # fmt: skip
HOSTILE_NAMES = ["os", "open", "eval", "__class__", "__import__", "__builtins__", "type", "getattr", "self"]
LITERALS = ["0", "1", "-3", "2.5", "1e308", "10**18", "float('nan')", "float('inf')", "True", "False", "None",
            "'a'", "''", "'on the left'", "'a small square area'", "'red'", "'%s'", "'{}'", "[]", "()", "{}",
            "[1, 2, 3]", "('a', 'b')", "{'k': 1}", "range(5)", "'x' * 10", "'\\ud800'", "'é☃ 漢字'", "'\\n\\t'",
            "'\\x00'", "10 ** 18", "-0.0", "1e-320", "'1e999'", "'nan'", "0xffffffffffffffff", "2 ** 63",
            *HUGE_INTS]  # fmt: skip
FORMAT_SPECS = [
    ":c",
    ":>5",
    ":.2f",
    ":,",
    ":x",
    ":%",
    ":08.3f",
    ":e",
    ":^9",
    ":+d",
    ":=10",
    ":s",
    "!r",
    "!a",
    "",
]
ATTRS = [
    "add_local_description",
    "set_global_description",
    "__class__",
    "__dict__",
    "upper",
    "format",
    "real",
]
BINOPS = ["+", "-", "*", "/", "//", "%", "**", "==", "<", "in", "not in", "is", "and", "or"]
CALLEES = [
    "len",
    "range",
    "enumerate",
    "zip",
    "min",
    "max",
    "round",
    "str",
    "int",
    "float",
    "Canvas",
    "x",
    "canvas",
]

NAME_TABLES = (LOCATIONS, OFFSETS, AREAS, COLORS)


class ProgramGenerator:
    """Random canvas-like programs from a seed: mostly well-formed, often valid, sometimes hostile.

    Hypothesis draws the seed (cheap), this builds the program (fast); a failure prints the seed
    and the program, which is enough to reproduce it.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def expr(self, depth: int = 3) -> str:
        rng = self.rng
        if depth <= 0 or rng.random() < 0.35:
            return self.leaf()
        a, b = self.expr(depth - 1), self.expr(depth - 1)
        if rng.random() < 0.05:  # now and then something outside the allow-list
            return rng.choice(
                [f"{a}.{rng.choice(ATTRS)}", f"{rng.choice(HOSTILE_NAMES)}({a})", f"({a} << {b})"]
            )
        forms = [
            f"({a} {rng.choice(BINOPS)} {b})", f"[{a}, {b}]", f"({a},)", f"-{a}", f"not {a}", f"{{{a}: {b}}}",
            f"{a}[{b}]", f"{a}[{b}:]", f"{rng.choice(CALLEES)}({a})", f"{rng.choice(CALLEES)}({a}, {b})",
            f'f"<{{({self.leaf()}){rng.choice(FORMAT_SPECS)}}}>"', f'f"{{({self.leaf()}):{{({self.leaf()})}}}}"',
            f"[{a} for i in {b}]",
            f"({a} if {b} else {self.expr(depth - 1)})", f"{{i: {a} for i in {b}}}", f"{rng.choice(CALLEES)}()",
        ]  # fmt: skip
        return rng.choice(forms)

    def leaf(self) -> str:
        return self.rng.choice(NAMES + LITERALS)

    def value(self, table: Any | None = None, kind: str = "str") -> str:
        """A canvas argument: usually a fitting value, sometimes any expression."""
        rng = self.rng
        if rng.random() < 0.15:
            return self.expr(2)
        if table is not None:
            name = rng.choice(list(table))
            return repr(
                name if rng.random() < 0.8 else rng.choice([name.upper(), name[:-2], name.replace(" ", "")])
            )
        if kind == "list":
            return rng.choice(
                ["[]", "['A detail.']", "[f'Detail {i}.' for i in range(3)]", "['a', 'b'] + ['c']"]
            )
        if kind == "num":
            return rng.choice(["1.0", "5", "2.5", "float(i + 1)", "i + 1", "10.0 - i", "True", "0", "-1"])
        return rng.choice(
            [
                "'A cat.'",
                "'tags, more'",
                "f'Object {i}'",
                "'x' * 3",
                "''",
                "'Calm.'",
                "str(i)",
                "'\\ud800'",
                "'é☃ 漢字'",
                "'a\\nb'",
                "f'{i:c}'",
                "'...'",
                "' , '",
            ]
        )

    def canvas_call(self) -> str:
        rng = self.rng
        if rng.random() < 0.25:
            args = [self.value(), self.value(kind="list"), self.value(), self.value(COLORS)]
            params = ["description", "detailed_descriptions", "tags", "HTML_web_color_name"]
            method = "set_global_description"
        else:
            args = [self.value(LOCATIONS), self.value(OFFSETS), self.value(AREAS), self.value(kind="num"),
                    self.value(), self.value(kind="list"), self.value(), self.value(), self.value(), self.value(),
                    self.value(COLORS)]  # fmt: skip
            params, method = list(LOCAL_PARAMS), "add_local_description"
        if rng.random() < 0.1:  # drop, add or duplicate an argument
            choice = rng.randrange(3)
            params, args = ([*params, "extra"], [*args, "1"]) if choice == 0 else (params[:-1], args[:-1])
            if choice == 2:
                params, args = [*params, params[0]], [*args, args[0]]
        if rng.random() < 0.5:
            parts = [f"{p}={a}" for p, a in zip(params, args, strict=True)]
        else:
            cut = rng.randrange(len(args) + 1)
            parts = args[:cut] + [f"{p}={a}" for p, a in zip(params[cut:], args[cut:], strict=True)]
        return f"canvas.{method}({', '.join(parts)})"

    def statement(self) -> str:
        rng = self.rng
        kind = rng.random()
        if kind < 0.35:
            return self.canvas_call()
        if kind < 0.5:
            return f"for i in {rng.choice(['range(3)', 'range(10 ** 9)', '[1, 2]', 'x', self.expr(2)])}:\n    {self.canvas_call()}"
        if kind < 0.65:
            return f"{rng.choice(['x', 'y', 'i', 'x, y', 'canvas'])} = {self.expr()}"
        if kind < 0.75:
            return f"if {self.expr(2)}:\n    x = {self.expr(2)}\nelse:\n    {self.canvas_call()}"
        if kind < 0.82:
            return f"x += {self.expr(2)}"
        if kind < 0.92:
            return rng.choice(HOSTILE)
        if kind < 0.95:  # values nested thousands of levels deep
            return f"for i in range({rng.choice([10, 3000, 20000])}):\n    x = [x]"
        return self.expr()

    def program(self) -> str:
        head = ["i = 0", "x = 1", "y = 'a'", "canvas = Canvas()"]
        if self.rng.random() < 0.8:
            head.append("canvas.set_global_description('A scene.', ['Detail.'], 'tags', 'white')")
        return "\n".join(head + [self.statement() for _ in range(self.rng.randrange(1, 6))])

    def mutate(self, source: str) -> str:
        rng = self.rng
        lines = source.splitlines()
        for _ in range(rng.randrange(1, 4)):
            op, at = rng.choice([0, 0, 0, 1, 2, 3, 3, 4]), rng.randrange(len(lines) + 1)
            if op == 0 and lines:  # replace a keyword argument's value with a generated one
                index = min(at, len(lines) - 1)
                head, sep, _ = lines[index].partition("=")
                if sep and lines[index].endswith(","):
                    lines[index] = (
                        f"{head}={self.value(rng.choice(NAME_TABLES)) if rng.random() < 0.5 else self.expr()},"
                    )
            elif op == 1:
                lines.insert(at, rng.choice(HOSTILE))
            elif op == 2 and lines:
                del lines[min(at, len(lines) - 1)]
            elif op == 3:
                lines.insert(at, self.statement())
            else:
                text = "\n".join(lines)
                lines = text[: rng.randrange(len(text) + 1)].splitlines()
        return "\n".join(lines)


seeds = st.integers(min_value=0, max_value=2**63)
programs = seeds.map(lambda seed: ProgramGenerator(seed).program())


TOKENS = [*NAMES, *LITERALS, *ATTRS, *BINOPS, "import", "from", "def", "lambda", "class", "while", "for", "if",
          "else", "try", "with", "global", "yield", "return", "(", ")", "[", "]", "{", "}", ",", ":", ".", "=",
          "+=", "\n", "\n    ", ";", "'", '"', "\\", "#", "f'", "{", "}", "*", "**", "@", "~", "!", "$", "\t", "<<", "&",
          "break", "continue", "pass", "canvas = Canvas()\n", "canvas.add_local_description(", "canvas.set_global_description("]  # fmt: skip
token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join)


def _golden_sources() -> list[str]:
    folder = Path(__file__).resolve().parents[1] / "fixtures" / "goldens"
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("[0-4]?_*.py"))]


GOLDEN_SOURCES = _golden_sources()
mutated_golden = st.tuples(st.sampled_from(GOLDEN_SOURCES), seeds).map(
    lambda t: ProgramGenerator(t[1]).mutate(t[0])
)


# ----------------------------------------------------------------------------- tests

# Examples per strategy: 10,100 programs in all, plus the hand-written hostile list.
COUNTS = {"grammar": 4000, "mutated": 3000, "tokens": 2000, "text": 1100}


def _fuzz(strategy: st.SearchStrategy[str], count: int, audit: AuditRecorder) -> dict[str, int]:
    seen = {"ok": 0, "error": 0}

    @settings(FUZZ, max_examples=count)
    @given(strategy)
    def check(source: str) -> None:
        seen[run_checked(source, audit)] += 1

    check()
    assert sum(seen.values()) >= count  # hypothesis ran every example it was asked for
    return seen


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_programs_are_refused_or_harmless(source: str, audit: AuditRecorder) -> None:
    # run_checked asserts that nothing audited happened and that only OmostError came out.
    assert run_checked(source, audit) in ("ok", "error")


@pytest.mark.parametrize(
    ("name", "strategy"),
    [
        ("grammar", programs),
        ("mutated", mutated_golden),
        ("tokens", token_soup),
        ("text", st.text(max_size=200)),
    ],
)
def test_fuzz(name: str, strategy: st.SearchStrategy[str], audit: AuditRecorder) -> None:
    seen = _fuzz(strategy, COUNTS[name], audit)
    if name in ("grammar", "mutated"):
        # The generators reach the evaluator and the canvas, not only the parser's refusals.
        assert seen["ok"] > COUNTS[name] // 50, seen


streams = st.tuples(st.one_of(mutated_golden, programs), st.floats(0, 1)).map(
    lambda t: t[0][: int(len(t[0]) * t[1])]
)


def test_partial_programs_never_raise(audit: AuditRecorder) -> None:
    count = {"n": 0}

    @settings(FUZZ, max_examples=1000)
    @given(streams)
    def check(source: str) -> None:
        audit.events.clear()
        audit.active = True
        try:
            conditions = interpret_partial(source)
        finally:
            audit.active = False
        assert audit.events == []
        assert isinstance(conditions, list) and all(isinstance(c, Condition) for c in conditions)
        count["n"] += 1

    check()
    assert count["n"] >= 1000


def test_the_counts_add_up_to_ten_thousand() -> None:
    assert sum(COUNTS.values()) >= 10_000


def test_the_audit_recorder_sees_what_the_interpreter_must_never_do(audit: AuditRecorder) -> None:
    # The check is live: an audited action while recording is caught.
    probe: Callable[[], Any] = lambda: open(__file__, "rb").close()  # noqa: E731
    audit.active = True
    try:
        probe()
    finally:
        audit.active = False
    assert [event for event, _ in audit.events] == ["open"]
    audit.events.clear()
