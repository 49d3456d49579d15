"""The safe interpreter: what it runs, what it refuses (naming the line), and its hard limits."""

from __future__ import annotations

import ast

import pytest

from omost_engine.canvas import Canvas
from omost_engine.errors import OmostError
from omost_engine.interpreter import DEFAULT_LIMITS, Interpreter, Limits, check, interpret

GLOBAL = "canvas = Canvas()\ncanvas.set_global_description('A room.', ['Warm.'], 'room', 'beige')\n"
LOCAL_KW = (
    "canvas.add_local_description(location={loc!r}, offset='no offset', area='a small square area', "
    "distance_to_viewer={dist}, description={desc}, detailed_descriptions=[], tags='t', atmosphere='a', "
    "style='s', quality_meta='q', HTML_web_color_name='red')\n"
)


def run(source: str, limits: Limits = DEFAULT_LIMITS) -> dict:
    return Interpreter(limits=limits).run(source)


@pytest.mark.parametrize(
    ("source", "name", "value"),
    [
        ("x = 1 + 2 * 3 - 4 / 2", "x", 5.0),
        ("x = 7 // 2 + 7 % 3 + 2 ** 3", "x", 12),
        ("a, (b, c) = 1, [2, 3]\nx = a + b + c", "x", 6),
        ("x = [1, 2] + [3]", "x", [1, 2, 3]),
        ("x = ('a',) * 2", "x", ("a", "a")),
        ("x = {'k': 1, 2: 'v'}['k']", "x", 1),
        ("x = 'ab' + 'cd'", "x", "abcd"),
        ("x = 'abcdef'[1:5:2]", "x", "bd"),
        ("n = 3\nx = f'{n} cats, {n * 1.5:.1f} kg, {\"x\"!r}, {n:>3}'", "x", "3 cats, 4.5 kg, 'x',   3"),
        ("x = 0\nfor i in range(5):\n    x += i", "x", 10),
        ("x = []\nfor i, (a, b) in enumerate(zip('ab', [1, 2]), 1):\n    x = x + [f'{i}{a}{b}']", "x", ["1a1", "2b2"]),
        ("x = 0\nfor i in range(10):\n    if i == 2:\n        continue\n    if i > 4:\n        break\n    x += i", "x", 8),
        ("base = 10\nx = [base + i for i in range(3)]", "x", [10, 11, 12]),  # the original fails here on 3.11
        ("x = [i * j for i in range(3) if i for j in [1, 2]]", "x", [1, 2, 2, 4]),
        ("x = {k: len(k) for k in ['a', 'bb']}", "x", {"a": 1, "bb": 2}),
        ("i = 99\nx = [i for i in range(2)]\ny = i", "y", 99),  # comprehension names do not leak
        ("x = max(i for i in [3, 1, 2])", "x", 3),
        ("x = (float('2.5'), int('7'), int(2.9), str(4), len('abc'), min(3, 1), max([1, 5]), round(2.567, 2))", "x",
         (2.5, 7, 2, "4", 3, 1, 5, 2.57)),
        ("x = 'a' if 1 > 2 else 'b'", "x", "b"),
        ("x = not (1 < 2 < 3) or 'yes'", "x", "yes"),
        ("x = 3 in [1, 2, 3] and 'a' not in 'xyz' and 5 in range(10)", "x", True),
        ("x = -(2) + +3", "x", 1),
        ("x = None is None", "x", True),
        ("x = float('inf') > 1e308", "x", True),
        ("pass\nx = 1", "x", 1),
    ],
)  # fmt: skip
def test_allowed_subset(source: str, name: str, value: object) -> None:
    assert run(source)[name] == value


def test_canvas_calls_keyword_positional_mixed_and_in_loops() -> None:
    source = GLOBAL + (
        "names = ['A cat.', 'A dog.']\n"
        "for i, name in enumerate(names):\n"
        "    " + LOCAL_KW.format(loc="on the left", dist="float(i + 1)", desc="name")
        + "canvas.add_local_description('on the right', 'no offset', 'a small square area', 9, 'A tree.', [],\n"
        "    tags='t', atmosphere='a', style='s', quality_meta='q', HTML_web_color_name='green')\n"
    )  # fmt: skip
    canvas = interpret(source)
    layout = canvas.process()
    assert [c.prefixes[-1] for c in layout.conditions[1:]] == ["A tree.", "A dog.", "A cat."]
    assert layout.conditions[1].color == (0, 128, 0)


def test_the_canvas_variable_is_the_last_canvas_bound_to_it() -> None:
    canvas = interpret(
        GLOBAL + "old = canvas\ncanvas = Canvas()\ncanvas.set_global_description('B.', [], '', 'red')"
    )
    assert isinstance(canvas, Canvas) and canvas.global_prefix == "B."


@pytest.mark.parametrize(
    ("statement", "fragment"),
    [
        ("import os", "an import is not allowed"),
        ("from os import path", "an import is not allowed"),
        ("x = ().__class__", "attribute access .__class__"),
        ("x = 'a'.upper()", "attribute access .upper"),
        ("x = canvas.add_local_description", "attribute access .add_local_description"),
        ("canvas.set_global_description = 1", "attribute access"),
        ("x = __builtins__", "the name '__builtins__' is not allowed"),
        ("x = __import__('os')", "the name '__import__'"),
        ("while True:\n    pass", "a while loop is not allowed"),
        ("def f():\n    pass", "a function definition (def) is not allowed"),
        ("f = lambda: 1", "a lambda is not allowed"),
        ("class A:\n    pass", "a class is not allowed"),
        ("try:\n    pass\nexcept Exception:\n    pass", "try is not allowed"),
        ("with x:\n    pass", "with is not allowed"),
        ("global x", "global is not allowed"),
        ("del canvas", "del is not allowed"),
        ("assert False", "assert is not allowed"),
        ("raise ValueError", "raise is not allowed"),
        ("x = {1, 2}", "a set is not allowed"),
        ("x = (y := 2)", "the := operator"),
        ("x = [*range(3)]", "* unpacking"),
        ("x = b'bytes'", "the constant b'bytes' is not allowed"),
        ("x = 1j", "the constant 1j is not allowed"),
        ("x = ...", "the constant Ellipsis is not allowed"),
        ("x = 1 << 40", "the << operator"),
        ("x = ~1", "the ~ operator"),
        ("x = [len][0]('a')", "only named functions can be called"),
        ("x = dict(**{})", "**keyword unpacking"),
        ("for i in []:\n    pass\nelse:\n    pass", "for ... else"),
        ("x: int = 1", "an annotation"),
        ("x = exec('1')", "the name 'exec' is not defined"),
        ("x = eval('1')", "the name 'eval' is not defined"),
        ("x = open('/etc/passwd')", "the name 'open' is not defined"),
        ("x = getattr(canvas, 'x')", "the name 'getattr' is not defined"),
        ("x = globals()", "the name 'globals' is not defined"),
        ("x = [0][0] = 1", "only names"),
        ("x = 'a' % 1", "string % formatting is not allowed"),
        ("x = f'{canvas}'", "must be a string, number"),
        ("x = str([1])", "must be a string, number"),
        ("x = [1] == [1]", "must be a string, number"),
        ("x = {[1]: 2}", "dict key must be"),
        ("x = len(5)", "len() of a int value"),
        ("x = len()", "len() takes 1-1 arguments, got 0"),
        ("x = int('12', base=10)", "takes no keyword arguments"),
        ("x = canvas()", "cannot be called"),
        ("x = (1).real", "attribute access .real"),
        ("x = 1 +", "not valid Python"),
        ("x = (-8) ** 0.5", "complex number"),
        ("x = 1 / 0", "division by zero"),
        ("x = [1][5]", "index 5 is not valid"),
        ("x = undefined_name", "the name 'undefined_name' is not defined"),
        ("yield 1", "yield is not allowed"),
        ("x = Canvas(1)", "Canvas() takes no arguments"),
        ("s = 'x'; s.add_local_description()", "can only be called on the canvas"),
        ("canvas.add_local_description(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)", "takes 11 arguments but 12"),
        ("canvas.set_global_description('a', [], 't')", "missing the argument HTML_web_color_name"),
        ("canvas.set_global_description('a', [], 't', 'red', description='b')", "got argument 'description' twice"),
        ("canvas.set_global_description('a', [], 't', 'red', colour='b')", "unknown argument 'colour'"),
        ("match x:\n    case 1:\n        pass", "match is not allowed"),
        ("break", "break outside a for loop is not allowed"),
        ("x = [1, 2][0:1, 1]", "multi-dimensional indexing is not allowed"),
        ("x = {'a': 1}['a', 'b']", "the index must be a string, number"),
        ("if True: continue", "continue outside a for loop"),
    ],
)  # fmt: skip
def test_everything_else_is_refused_naming_the_line(statement: str, fragment: str) -> None:
    source = GLOBAL + statement  # the statement starts on line 3
    with pytest.raises(OmostError) as info:
        interpret(source)
    assert fragment in str(info.value)
    assert info.value.line == 3 and str(info.value).startswith("line 3: ")


def test_refusal_happens_before_anything_runs() -> None:
    # The canvas call on line 1 would succeed; the import on line 3 stops the program first.
    interp = Interpreter()
    with pytest.raises(OmostError, match="an import"):
        interp.run("canvas = Canvas()\nx = 1\nimport os")
    assert interp.steps == 0 and interp.canvases == []


def test_missing_canvas_is_a_clear_error() -> None:
    with pytest.raises(OmostError, match="the variable 'canvas' is never assigned"):
        interpret("c = Canvas()")


LIMIT_CASES = [
    ("x = 0\nfor i in range(10 ** 6):\n    x += 1", "loops too much", "iterations"),
    ("x = [i for i in range(100000) if i < 0]", "loops too much", "iterations"),
    ("x = 'a' * 10 ** 6", "repeating makes 1000000 items", "size"),
    ("x = 'a' * 9000\ny = x + x", "joining makes 18000 items", "size"),
    ("x = [0] * 5000", "repeating makes 5000 items", "size"),
    ("x = [i for i in range(2000)]", "a collection of 1001 items is too large", "collection"),
    ("x = 2 ** 10000", "is too large", "integer"),
    ("x = 9 ** 9 ** 9", "is too large", "integer"),
    ("x = 10 ** 18 * 10 ** 18", "an integer of 120 bits is too large", "integer"),
    ("x = int(1e300)", "too large", "integer"),
    ("x = f'{1:>99999}'", "format spec '>99999' is not allowed", "format spec"),
    ("x = round(10, -10 ** 18)", "round() digits must be an integer from -20 to 20", "round"),
    ("x = int('9' * 5000)", "int() of a string longer than 30", "int"),
    ("s = 'a' * 5000\nfor i in range(300):\n    t = s + str(i)", "builds too much text", "text"),
    ("x = [0] * 1000\nfor i in range(100):\n    y = 5 in x", "too much work", "steps"),
    ("h = 'a' * 9999\nfor i in range(1000):\n    y = 'ab' in h", "too much work", "steps"),
    (
        "canvas = Canvas()\nfor i in range(5000):\n    canvas.set_global_description('g', [], 't', f'light sky blu{i}')",
        "too much work",
        "steps",
    ),
    (
        "big = ['d' * 1999] * 59\ncanvas = Canvas()\nfor i in range(5000):\n"
        "    canvas.set_global_description('g', big, 't', 'red')",
        "too much work",
        "steps",
    ),
]


@pytest.mark.parametrize(("source", "fragment", "parameter"), LIMIT_CASES)
def test_hard_limits_stop_a_program_with_a_clear_error(source: str, fragment: str, parameter: str) -> None:
    interp = Interpreter()
    with pytest.raises(OmostError) as info:
        interp.run(source)
    assert fragment in str(info.value) and info.value.parameter == parameter
    limits = interp.limits
    # It stopped at the limit, not after: the counters never run far past it.
    assert interp.steps <= limits.max_steps + limits.max_items + limits.canvas_call_steps
    assert interp.iterations <= limits.max_iterations + 1
    assert interp.chars <= limits.max_total_chars + limits.max_string_chars


def test_worst_case_work_is_bounded_by_the_step_limit() -> None:
    # Busy but legal: 10,000 iterations of a loop body that does as much as it can per step.
    busy = (
        "x = [str(i) for i in range(1000)]\nn = 0\nfor i in range(10000):\n    n = n + len(x) * 2 - (i in x)"
    )
    interp = Interpreter()
    with pytest.raises(OmostError, match="too much work"):
        interp.run(busy)
    assert interp.steps <= DEFAULT_LIMITS.max_steps + DEFAULT_LIMITS.max_items


def test_source_size_depth_regions_and_canvases_are_limited() -> None:
    with pytest.raises(OmostError, match="the program is too long"):
        interpret("x = 1\n" * 6000)
    with pytest.raises(OmostError, match="nests too deeply"):
        interpret("x = " + "[" * 60 + "]" * 60)
    with pytest.raises(OmostError, match="cannot be parsed|not valid Python"):
        interpret("x = " + "-" * 30000 + "1")
    with pytest.raises(OmostError, match="cannot be parsed|nests too deeply"):
        interpret("x = " + "1 + " * 5000 + "1")
    with pytest.raises(OmostError, match="too many Canvas"):
        interpret("for i in range(20):\n    canvas = Canvas()")
    loop = GLOBAL + "for i in range(100):\n    " + LOCAL_KW.format(loc="on the left", dist=1.0, desc="'x'")
    with pytest.raises(OmostError, match="too many local descriptions: more than 64") as info:
        interpret(loop)
    assert info.value.line == 4


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(OmostError, match="not valid Python") as info:
        interpret(GLOBAL + "x = 1\ncanvas.add_local_description(\n")
    assert info.value.line is not None and info.value.line >= 4


def test_check_accepts_every_golden_style_construct(golden_program) -> None:
    refused = []
    for number in ("01", "02", "05", "10"):
        try:
            check(ast.parse(golden_program(number)))
        except OmostError as exc:
            refused.append((number, str(exc)))
    assert refused == []


def test_the_first_refusal_in_the_source_is_reported() -> None:
    with pytest.raises(OmostError, match="line 2: an import") as info:
        interpret("x = 1\nimport os\nos.system('x')\nwhile True:\n    pass")
    assert info.value.line == 2


def test_a_deeply_nested_value_in_an_error_message_is_quoted_safely() -> None:
    # 5,000 levels of lists: plain repr() would overflow the recursion limit.
    source = "x = []\nfor i in range(5000):\n    x = [x]\n" + GLOBAL.replace("'A room.'", "x")
    with pytest.raises(
        OmostError,
        match=r"line 5: description of the global description must be a string, got \[\[\[\.\.\.\]\]\]",
    ):
        interpret(source)


class _SpuriousSystemError:
    """Stands in for ``ast.parse`` hit by cpython gh-106905: fails ``failures`` times, then parses."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.parse = ast.parse

    def __call__(self, *args: object, **kwargs: object) -> ast.Module:
        self.calls += 1
        if self.calls <= self.failures:
            raise SystemError("AST constructor recursion depth mismatch (before=177, after=85)")
        return self.parse(*args, **kwargs)  # type: ignore[arg-type]


def test_a_spurious_ast_systemerror_is_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = _SpuriousSystemError(failures=1)
    monkeypatch.setattr("omost_engine.interpreter.ast.parse", flaky)
    canvas = run(GLOBAL)["canvas"]
    assert isinstance(canvas, Canvas)
    assert flaky.calls == 2


def test_a_persistent_ast_systemerror_is_one_omost_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from omost_engine.interpreter import interpret_partial

    monkeypatch.setattr("omost_engine.interpreter.ast.parse", _SpuriousSystemError(failures=10**6))
    with pytest.raises(OmostError, match="cannot be parsed"):
        run(GLOBAL)
    assert interpret_partial(GLOBAL) == []


HUGE_HEX = "0x" + "f" * 4000  # 16,000 bits: its decimal form is past Python's 4300-digit print limit
HUGE_DECIMAL = "9" * 4000
HUGE_USES = [
    "y = str(x)", "y = float(x)", "y = f'{x}'", "y = f'{x!r:>5}'", "y = [1, 2][x]", "y = x < 3", "y = x == 3",
    "y = x + 0.5", "y = int(x)", "y = {x: 1}", "y = round(x)",
    "canvas.set_global_description('A room.', [], 'room', x)",
    LOCAL_KW.format(loc="on the left", dist=1.0, desc="'a'").replace("'red'", "x"),
]  # fmt: skip


@pytest.mark.parametrize(
    "literal",
    [HUGE_HEX, HUGE_DECIMAL, "-" + HUGE_HEX, "9" * 5000],
    ids=["hex", "decimal", "negative-hex", "decimal-past-the-parser-limit"],
)
@pytest.mark.parametrize("use", HUGE_USES, ids=range(len(HUGE_USES)))
def test_a_huge_integer_constant_is_one_clear_error_whatever_uses_it(literal: str, use: str) -> None:
    source = f"canvas = Canvas()\nx = {literal}\n{use}\n"
    with pytest.raises(
        OmostError,
        match=r"^line 2: an integer constant (of \d+ bits )?is too large; allowed: at most 64 bits$",
    ) as info:
        interpret(source)
    assert info.value.parameter == "integer"
    assert len(str(info.value)) < 200


def test_integer_constants_up_to_the_limit_still_run() -> None:
    assert run("x = 0xffffffffffffffff\ny = -9223372036854775808\nz = str(x)")["z"] == str(2**64 - 1)


@pytest.mark.parametrize(
    "literal", [HUGE_HEX, HUGE_DECIMAL, "9" * 5000], ids=["hex", "decimal", "5000-digits"]
)
def test_interpret_partial_does_not_raise_on_a_huge_integer(literal: str) -> None:
    from omost_engine.interpreter import interpret_partial

    source = (
        GLOBAL
        + f"x = {literal}\ny = str(x)\ncanvas.add_local_description('on the left', x, 'a', 1, 'a', [], 't', 'a', 's', 'q', 'red')\n"
    )
    conditions = interpret_partial(source)
    # The statement with the constant is refused (or does not parse), so the region after it is never
    # drawn; at most the global description before it is.
    assert [c.prefixes for c in conditions] in ([], [("A room.",)])


@pytest.mark.parametrize(
    "value",
    [10**5000, -(10**5000), [1, 10**5000], {"k": 2**20000}, (2**70000,)],
    ids=["int", "negative", "in-a-list", "in-a-dict", "in-a-tuple"],
)
def test_quoting_a_huge_integer_in_an_error_message_is_safe(value: object) -> None:
    from omost_engine.errors import quote

    text = quote(value)
    assert "an integer of" in text and len(text) <= 60
    error = OmostError("bad value", parameter="p", value=value, allowed=[10**5000, "a"])
    assert "an integer of" in error.allowed  # type: ignore[operator]
