"""A safe interpreter for canvas programs: ``ast`` in, a ``Canvas`` out, never ``exec``.

The original runs the LLM's code with ``exec`` and full builtins, which is remote code execution
in a public bot. Here the code is parsed with ``ast``, checked against an allow-list, and walked
by a small evaluator that knows only plain values (None, bool, int, float, str, list, tuple,
dict, range), ``Canvas()`` and its two methods, and a few pure builtins. Every refusal and every
runtime failure is one OmostError naming the line. Hard limits (``Limits``) bound the work and
memory of any program; docs/canvas.md lists them.
"""

from __future__ import annotations

import ast
import contextlib
import operator
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from omost_engine.canvas import GLOBAL_PARAMS, LOCAL_PARAMS, Canvas
from omost_engine.conditions import Condition
from omost_engine.errors import OmostError, quote
from omost_engine.layout import MAX_REGIONS


@dataclass(frozen=True)
class Limits:
    max_source_chars: int = 32 * 1024  # an LLM reply of 4096 tokens holds about 16 KiB of code
    max_depth: int = 40  # nesting of statements/expressions in the source
    max_steps: int = 50_000  # evaluation steps; bulk operations cost one per item touched
    max_iterations: int = 10_000  # loop and comprehension iterations, all loops together
    max_string_chars: int = 10_000  # one string value
    max_total_chars: int = 1_000_000  # characters created by string operations, all together
    max_items: int = 1_000  # one list / tuple / dict
    max_int_bits: int = 64  # magnitude of an int
    max_regions: int = MAX_REGIONS  # add_local_description calls
    max_canvases: int = 8  # Canvas() calls
    canvas_call_steps: int = 50  # a canvas call (name resolution) costs this many steps


DEFAULT_LIMITS = Limits()
SOURCE_NAME = "<canvas>"  # the file name ast.parse is given
_LINEAR_CUTS = 3  # complete_prefix: cut points tried one by one before searching by halving
# CPython 3.11 keeps the AST constructor's recursion depth in state shared by every thread, so two
# threads parsing at once (the LLM thread streaming, the event loop checking a layout) can fail with
# a spurious "SystemError: AST constructor recursion depth mismatch" (cpython gh-106905). Parses in
# this process take turns; one that still fails that way is tried again once.
_AST_PARSE_TURN = threading.Lock()


def parse_python(source: str) -> ast.Module:
    """``ast.parse`` of a canvas program, safe to call from several threads."""
    with _AST_PARSE_TURN:
        try:
            return ast.parse(source, filename=SOURCE_NAME, mode="exec")
        except SystemError:
            return ast.parse(source, filename=SOURCE_NAME, mode="exec")


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}

# Node types the checker lets through, with the fields that hold child nodes to check (operator
# and context fields are checked by the parent); anything else is refused before running.
_CHILDREN: dict[type, tuple[str, ...]] = {
    ast.Module: ("body",), ast.Expr: ("value",), ast.Assign: ("targets", "value"),
    ast.AugAssign: ("target", "value"), ast.For: ("target", "iter", "body"), ast.If: ("test", "body", "orelse"),
    ast.Pass: (), ast.Break: (), ast.Continue: (), ast.Constant: (), ast.Name: (), ast.List: ("elts",),
    ast.Tuple: ("elts",), ast.Dict: ("keys", "values"), ast.JoinedStr: ("values",),
    ast.FormattedValue: ("value", "format_spec"), ast.BinOp: ("left", "right"), ast.UnaryOp: ("operand",),
    ast.BoolOp: ("values",), ast.Compare: ("left", "comparators"), ast.IfExp: ("test", "body", "orelse"),
    ast.Subscript: ("value", "slice"), ast.Slice: ("lower", "upper", "step"), ast.Call: ("func", "args", "keywords"),
    ast.keyword: ("value",), ast.ListComp: ("elt", "generators"), ast.GeneratorExp: ("elt", "generators"),
    ast.DictComp: ("key", "value", "generators"), ast.comprehension: ("target", "iter", "ifs"),
}  # fmt: skip
_REFUSED_WHY = {
    ast.Import: "an import", ast.ImportFrom: "an import", ast.While: "a while loop",
    ast.FunctionDef: "a function definition (def)", ast.AsyncFunctionDef: "a function definition (def)",
    ast.Lambda: "a lambda", ast.ClassDef: "a class", ast.Try: "try", ast.With: "with", ast.Global: "global",
    ast.Nonlocal: "nonlocal", ast.Delete: "del", ast.Raise: "raise", ast.Assert: "assert", ast.Return: "return",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.Await: "await", ast.NamedExpr: "the := operator",
    ast.Starred: "* unpacking", ast.Set: "a set", ast.SetComp: "a set comprehension", ast.Match: "match",
    ast.AnnAssign: "an annotation", ast.AsyncFor: "async for", ast.AsyncWith: "async with",
    ast.LShift: "the << operator", ast.RShift: "the >> operator", ast.BitOr: "the | operator",
    ast.BitAnd: "the & operator", ast.BitXor: "the ^ operator", ast.Invert: "the ~ operator",
    ast.MatMult: "the @ operator", ast.Slice: "a slice",
}  # fmt: skip
_OPERATORS = frozenset({*_BINOPS, *_CMPOPS, *_UNARY, ast.And, ast.Or})
_METHODS = {"set_global_description": GLOBAL_PARAMS, "add_local_description": LOCAL_PARAMS}
_SCALARS = (type(None), bool, int, float, str)
_Checked = TypeVar("_Checked")  # Interpreter._value hands back what it checked
_NUMBERS = frozenset({int, float, bool})
# Format specs an f-string may use: align, sign, zero, width <= 4 digits, grouping, precision <= 2 digits, type.
_FORMAT_SPEC = re.compile(r"[<>^=]?[+\- ]?#?0?\d{0,4}[,_]?(?:\.\d{1,2})?[bcdeEfFgGnosxX%]?")


@dataclass(frozen=True)
class Builtin:
    """What a builtin's name evaluates to inside a program: an inert token, not a Python callable."""

    name: str

    def __repr__(self) -> str:
        return self.name


class _CanvasClass:
    """What the name ``Canvas`` evaluates to inside a program."""

    def __repr__(self) -> str:
        return "Canvas"


class _Break(Exception):
    """Unwinds a `break` to its loop."""


class _Continue(Exception):
    """Unwinds a `continue` to its loop."""


def _parse(source: str, limits: Limits) -> ast.Module:
    if not isinstance(source, str):
        raise OmostError("the program must be text", parameter="program", value=type(source).__name__)
    if len(source) > limits.max_source_chars:
        raise OmostError(
            f"the program is too long: {len(source)} characters; allowed: at most {limits.max_source_chars}",
            parameter="program",
            value=len(source),
            allowed=f"at most {limits.max_source_chars} characters",
        )
    try:
        return parse_python(source)
    except SyntaxError as exc:
        # The line comes from our own text: exc.text may have been read from a file named like
        # the source (CPython looks one up for some errors).
        lines = source.splitlines()
        text = lines[exc.lineno - 1] if exc.lineno and 0 < exc.lineno <= len(lines) else ""
        if "integer string conversion" in exc.msg:  # a decimal literal past Python's 4300-digit limit
            raise OmostError(
                f"an integer constant is too large; allowed: at most {limits.max_int_bits} bits",
                parameter="integer",
                value="<an integer of more than 4300 digits>",
                allowed=f"at most {limits.max_int_bits} bits",
                line=exc.lineno,
            ) from None
        raise OmostError(
            f"the program is not valid Python: {exc.msg}; allowed: a canvas program in Python syntax",
            parameter="program",
            value=text.strip()[:60],
            allowed="Python syntax",
            line=exc.lineno,
        ) from None
    except (
        ValueError,
        RecursionError,
        MemoryError,
        SystemError,
    ):  # null bytes; nesting too deep; see parse_python
        raise OmostError(
            "the program cannot be parsed (null bytes or nesting too deep); allowed: a plain canvas program",
            parameter="program",
            allowed="Python syntax",
        ) from None


_SUBSET = (
    "allowed: assignments, for/if, literals, f-strings, arithmetic, comprehensions, Canvas(), "
    "the two canvas methods, float/int/str/len/range/enumerate/zip/min/max/round"
)


def _refuse_kind(node: ast.AST) -> tuple[str, str, Any]:
    kind = type(node)
    if isinstance(node, ast.Attribute):  # reached other than as the function of a canvas method call
        attr = node.attr
        return (
            f"attribute access .{attr} is not allowed; allowed: calling "
            "canvas.set_global_description(...) and canvas.add_local_description(...)",
            "attribute",
            attr,
        )
    what = _REFUSED_WHY.get(kind, kind.__name__)
    return f"{what} is not allowed in a canvas program; {_SUBSET}", "program", what


def _refuse_ops(ops: Iterable[ast.AST]) -> tuple[str, str, Any] | None:
    for op in ops:
        if type(op) not in _OPERATORS:
            what = _REFUSED_WHY.get(type(op), type(op).__name__)
            return f"{what} is not allowed in a canvas program; {_SUBSET}", "operator", what
    return None


def _refuse_call(node: ast.Call) -> tuple[str, str, Any] | None:
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr not in _METHODS:
        return _refuse_kind(func)
    if not isinstance(func, ast.Name | ast.Attribute):
        return f"only named functions can be called; {_SUBSET}", "call", type(func).__name__
    if any(k.arg is None for k in node.keywords):
        return "**keyword unpacking is not allowed; allowed: name=value arguments", "call", "**"
    return None


def _refuse_constant(node: ast.Constant) -> tuple[str, str, Any] | None:
    if isinstance(node.value, _SCALARS):
        return None
    return (
        f"the constant {quote(node.value)} is not allowed; allowed: strings, numbers, True, False, None",
        "constant",
        node.value,
    )


def _refuse_name(node: ast.Name) -> tuple[str, str, Any] | None:
    if not node.id.startswith("__"):
        return None
    return f"the name {node.id!r} is not allowed; allowed: names without a leading '__'", "name", node.id


# Extra checks for the allowed node types that need one: (message, parameter, value) or None.
_SPECIAL: dict[type, Callable[[Any], tuple[str, str, Any] | None]] = {
    ast.BinOp: lambda n: _refuse_ops((n.op,)),
    ast.AugAssign: lambda n: _refuse_ops((n.op,)),
    ast.UnaryOp: lambda n: _refuse_ops((n.op,)),
    ast.BoolOp: lambda n: _refuse_ops((n.op,)),
    ast.Compare: lambda n: _refuse_ops(n.ops),
    ast.Name: _refuse_name,
    ast.Call: _refuse_call,
    ast.Constant: _refuse_constant,
    ast.Dict: lambda n: ("**dict unpacking is not allowed; allowed: {key: value, ...}", "dict", "**")
    if any(k is None for k in n.keys) else None,
    ast.comprehension: lambda n: ("async comprehensions are not allowed; allowed: [x for x in items]", "program",
                                  "async for") if n.is_async else None,
    ast.Subscript: lambda n: ("multi-dimensional indexing is not allowed; allowed: x[i] or x[a:b]", "index", "x[a:b, c]")
    if isinstance(n.slice, ast.Tuple) and any(isinstance(e, ast.Slice) for e in n.slice.elts) else None,
    ast.For: lambda n: ("for ... else is not allowed; allowed: a plain for loop", "program", "for-else")
    if n.orelse else None,
}  # fmt: skip


def check(tree: ast.AST, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse, before anything runs, every construct outside the allow-list.

    A depth-first walk in source order, so the first refusal reported is the first in the
    source. It descends only into the fields of allowed nodes and stops below ``max_depth``,
    so the recursion stays shallow whatever the parser produced.
    """

    def visit(node: ast.AST, depth: int, line: int | None, in_loop: bool) -> None:
        line = getattr(node, "lineno", line)
        if depth > limits.max_depth:
            raise OmostError(
                f"the program nests too deeply; allowed: at most {limits.max_depth} levels",
                parameter="program",
                value=depth,
                allowed=f"at most {limits.max_depth} levels",
                line=line,
            )
        kind = type(node)
        fields = _CHILDREN.get(kind)
        special = _SPECIAL.get(kind)
        refused = _refuse_kind(node) if fields is None else special(node) if special is not None else None
        if kind is ast.Constant and type(node.value) is int and node.value.bit_length() > limits.max_int_bits:  # type: ignore[attr-defined]  # kind is type(node): an identity test (fast) that mypy does not narrow by
            # A constant is checked like a computed int, before anything can print or convert it.
            bits = node.value.bit_length()  # type: ignore[attr-defined]  # as above: node is an ast.Constant
            refused = (f"an integer constant of {bits} bits is too large; allowed: at most {limits.max_int_bits} bits",
                       "integer", f"<an integer of {bits} bits>")  # fmt: skip
        if kind in (ast.Break, ast.Continue) and not in_loop:
            what = "break" if kind is ast.Break else "continue"
            refused = (
                f"{what} outside a for loop is not allowed; allowed: {what} inside a for loop",
                "program",
                what,
            )
        if refused:
            message, parameter, value = refused
            raise OmostError(message, parameter=parameter, value=value, allowed=_SUBSET[9:], line=line)
        for field in fields:  # type: ignore[union-attr]  # None only for refused kinds, which raised above
            child = getattr(node, field)
            inner = in_loop or (kind is ast.For and field == "body")
            if type(child) is list:
                for item in child:
                    # Plain string constants (most of a canvas program) need no visit of their own.
                    if item is not None and not (type(item) is ast.Constant and type(item.value) is str):
                        visit(item, depth + 1, line, inner)
            elif child is not None and not (type(child) is ast.Constant and type(child.value) is str):
                if (
                    type(child) is ast.Attribute and type(node) is ast.Call
                ):  # a canvas method: check its object
                    child = child.value
                visit(child, depth + 1, line, inner)

    visit(tree, 0, None, False)


class Interpreter:
    """Runs one program. ``steps``, ``iterations`` and ``chars`` tell what it used."""

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.variables: dict[str, Any] = {}
        self.scopes: list[dict[str, Any]] = []  # comprehension scopes, innermost last
        self.canvases: list[Canvas] = []
        self.steps = 0
        self.iterations = 0
        self.chars = 0
        self.line: int | None = None
        self._builtins: dict[str, Callable[..., Any]] = {
            "float": self._float, "int": self._int, "str": self._str, "len": self._len,
            "range": self._range, "enumerate": self._enumerate, "zip": self._zip,
            "min": self._minmax(min), "max": self._minmax(max), "round": self._round,
        }  # fmt: skip
        self._expr: dict[type, Callable[[Any], Any]] = {
            ast.Constant: self._constant, ast.Name: self._name, ast.List: self._list, ast.Tuple: self._tuple,
            ast.Dict: self._dict, ast.JoinedStr: self._joined, ast.FormattedValue: self._formatted,
            ast.BinOp: self._binop, ast.UnaryOp: self._unary, ast.BoolOp: self._boolop, ast.Compare: self._compare,
            ast.IfExp: self._ifexp, ast.Subscript: self._subscript, ast.Call: self._call,
            ast.ListComp: self._listcomp, ast.GeneratorExp: self._listcomp, ast.DictComp: self._dictcomp,
        }  # fmt: skip
        self._stmt: dict[type, Callable[[Any], None]] = {
            ast.Expr: self._s_expr, ast.Assign: self._s_assign, ast.AugAssign: self._s_augassign,
            ast.For: self._s_for, ast.If: self._s_if, ast.Pass: self._s_pass,
            ast.Break: self._s_break, ast.Continue: self._s_continue,
        }  # fmt: skip

    # ----------------------------------------------------------------- entry points
    def run(self, source: str) -> dict[str, Any]:
        """Parse, check and run ``source``; returns the top-level variables."""
        tree = _parse(source, self.limits)
        check(tree, self.limits)
        self._block(tree.body)
        return self.variables

    def run_statements(self, body: list[ast.stmt]) -> None:
        self._block(body)

    # ----------------------------------------------------------------- accounting
    def _charge(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.limits.max_steps:
            raise OmostError(
                f"the program does too much work: more than {self.limits.max_steps} steps; "
                "allowed: a canvas program that stays within the step limit",
                parameter="steps",
                value=self.steps,
                allowed=f"at most {self.limits.max_steps} steps",
                line=self.line,
            )

    def _iterate(self, iterable: Any, node: ast.AST) -> Iterable[Any]:
        if not isinstance(iterable, list | tuple | range | str | dict):
            raise self._error(node, f"cannot loop over {self._kind(iterable)}; allowed: a list, tuple, string, "
                              "dict, range(...), enumerate(...) or zip(...)", "for", iterable)  # fmt: skip
        for item in iterable:
            self.iterations += 1
            if self.iterations > self.limits.max_iterations:
                raise self._error(node, f"the program loops too much: more than {self.limits.max_iterations} "
                                  "iterations in all; allowed: at most that many", "iterations", self.iterations)  # fmt: skip
            yield item

    def _value(self, value: _Checked, node: ast.AST) -> _Checked:
        """Check a freshly made value against the size limits."""
        if isinstance(value, str):
            if len(value) > self.limits.max_string_chars:
                raise self._error(node, f"a string of {len(value)} characters is too long; allowed: at most "
                                  f"{self.limits.max_string_chars}", "string", value[:40])  # fmt: skip
        elif isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > self.limits.max_int_bits:
                raise self._error(node, f"an integer of {value.bit_length()} bits is too large; allowed: at most "
                                  f"{self.limits.max_int_bits} bits", "integer", "...")  # fmt: skip
        elif isinstance(value, list | tuple | dict):
            if len(value) > self.limits.max_items:
                raise self._error(node, f"a collection of {len(value)} items is too large; allowed: at most "
                                  f"{self.limits.max_items}", "collection", len(value))  # fmt: skip
        elif value is not None and not isinstance(
            value, bool | float | range | Canvas | _CanvasClass | Builtin
        ):
            raise self._error(node, f"the operation made {self._kind(value)}; allowed: plain values",
                              "value", type(value).__name__)  # fmt: skip
        return value

    def _new_chars(self, n: int, node: ast.AST) -> None:
        self.chars += n
        self._charge(1 + n // 1000)
        if self.chars > self.limits.max_total_chars:
            raise self._error(node, f"the program builds too much text: more than {self.limits.max_total_chars} "
                              "characters in all; allowed: at most that many", "text", self.chars)  # fmt: skip

    def _error(self, node: ast.AST | None, message: str, parameter: str, value: Any) -> OmostError:
        return OmostError(
            message, parameter=parameter, value=value, line=getattr(node, "lineno", None) or self.line
        )

    @staticmethod
    def _kind(value: Any) -> str:
        if isinstance(value, Canvas):
            return "the canvas"
        return f"a {type(value).__name__} value" if not isinstance(value, _CanvasClass) else "Canvas"

    # ----------------------------------------------------------------- statements
    def _block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.line = stmt.lineno
            self._charge()
            self._stmt[type(stmt)](stmt)

    def _s_expr(self, node: ast.Expr) -> None:
        self._eval(node.value)

    def _s_assign(self, node: ast.Assign) -> None:
        value = self._eval(node.value)
        for target in node.targets:
            self._assign(target, value)

    def _s_augassign(self, node: ast.AugAssign) -> None:
        if not isinstance(node.target, ast.Name):
            raise self._error(node, "only a plain name can be updated with +=, -= ...; allowed: name += value",
                              "assignment", type(node.target).__name__)  # fmt: skip
        current = self._lookup(node.target.id, node.target)
        self._assign(node.target, self._arith(node.op, current, self._eval(node.value), node))

    def _s_for(self, node: ast.For) -> None:
        iterable = self._eval(node.iter)
        for item in self._iterate(iterable, node):
            self._assign(node.target, item)
            try:
                self._block(node.body)
            except _Break:
                break
            except _Continue:
                continue

    def _s_if(self, node: ast.If) -> None:
        self._block(node.body if self._truth(self._eval(node.test), node) else node.orelse)

    def _s_pass(self, node: ast.Pass) -> None:
        return None

    def _s_break(self, node: ast.Break) -> None:
        raise _Break

    def _s_continue(self, node: ast.Continue) -> None:
        raise _Continue

    def _assign(self, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            (self.scopes[-1] if self.scopes else self.variables)[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            if not isinstance(value, list | tuple | str) or len(value) != len(target.elts):
                raise self._error(target, f"cannot unpack {self._kind(value)} into {len(target.elts)} names; "
                                  f"allowed: a list or tuple of exactly {len(target.elts)} items", "assignment",
                                  value if isinstance(value, _SCALARS) else type(value).__name__)  # fmt: skip
            for t, v in zip(target.elts, value, strict=True):
                self._assign(t, v)
        else:
            raise self._error(target, "only names (and tuples of names) can be assigned; allowed: name = value",
                              "assignment", type(target).__name__)  # fmt: skip

    # ----------------------------------------------------------------- expressions
    def _eval(self, node: ast.expr) -> Any:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            self._charge(0)
        handler = self._expr.get(type(node))
        if handler is None:  # allowed by check() only in another position (e.g. a slice inside a tuple)
            what = _REFUSED_WHY.get(type(node), type(node).__name__)
            raise self._error(node, f"{what} is not allowed here; {_SUBSET}", "program", what)
        return handler(node)

    def _truth(self, value: Any, node: ast.AST) -> bool:
        if isinstance(value, Canvas | _CanvasClass):
            raise self._error(node, "the canvas has no truth value; allowed: numbers, strings, lists", "condition",
                              "canvas")  # fmt: skip
        return bool(value)

    def _constant(self, node: ast.Constant) -> Any:
        return node.value

    def _lookup(self, name: str, node: ast.AST) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.variables:
            return self.variables[name]
        if name == "Canvas":
            return _CANVAS
        if name in self._builtins:
            return Builtin(name)
        raise self._error(node, f"the name {name!r} is not defined; allowed: names assigned earlier, Canvas, "
                          "float, int, str, len, range, enumerate, zip, min, max, round", "name", name)  # fmt: skip

    def _name(self, node: ast.Name) -> Any:
        return self._lookup(node.id, node)

    def _items(self, elts: list[ast.expr]) -> list[Any]:
        # Constants (most items of a canvas program) are read directly: one step each, no dispatch.
        self.steps += len(elts)
        return [e.value if type(e) is ast.Constant else self._eval(e) for e in elts]

    def _list(self, node: ast.List) -> list[Any]:
        return self._value(self._items(node.elts), node)

    def _tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return self._value(tuple(self._items(node.elts)), node)

    def _dict(self, node: ast.Dict) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values, strict=True):
            key = self._eval(k)  # type: ignore[arg-type]  # None keys (**d) are refused by check()
            self._scalar(key, node, "dict key")
            out[key] = self._eval(v)
        return self._value(out, node)

    def _scalar(self, value: Any, node: ast.AST, what: str) -> None:
        # Hashing or comparing containers can cost far more than one step, so only scalars go there.
        if not isinstance(value, _SCALARS):
            raise self._error(node, f"the {what} must be a string, number, bool or None, got {self._kind(value)}",
                              what, type(value).__name__)  # fmt: skip

    def _joined(self, node: ast.JoinedStr) -> str:
        # An f-string's constant parts are always str; its {...} parts evaluate to str (_formatted).
        parts: list[str] = [
            p.value if isinstance(p, ast.Constant) and isinstance(p.value, str) else self._eval(p)
            for p in node.values
        ]
        text = "".join(parts)
        self._new_chars(len(text), node)
        return self._value(text, node)

    def _formatted(self, node: ast.FormattedValue) -> str:
        value = self._eval(node.value)
        self._scalar(value, node, "value in an f-string")
        spec = "" if node.format_spec is None else self._eval(node.format_spec)
        if not _FORMAT_SPEC.fullmatch(spec):
            raise self._error(node, f"the format spec {spec!r} is not allowed; allowed: e.g. :.2f, :>10, :03d",
                              "format spec", spec)  # fmt: skip
        if node.conversion == ord("r"):
            value = repr(value)
        elif node.conversion == ord("a"):
            value = ascii(value)
        try:
            text = format(value, spec)
        except (ValueError, TypeError, OverflowError) as exc:
            raise self._error(
                node, f"cannot format {quote(value)} with {spec!r}: {exc}", "format spec", spec
            ) from None
        self._new_chars(len(text), node)
        return text

    def _binop(self, node: ast.BinOp) -> Any:
        return self._arith(node.op, self._eval(node.left), self._eval(node.right), node)

    def _arith(self, op: ast.operator, left: Any, right: Any, node: ast.AST) -> Any:
        fn = _BINOPS[type(op)]  # check() refused every other operator
        if type(left) in _NUMBERS and type(right) in _NUMBERS and fn is not operator.pow:
            return self._number_arith(fn, op, left, right, node)  # the common case, kept short
        for side in (left, right):
            if isinstance(side, Canvas | _CanvasClass | range | dict | Builtin):
                raise self._error(node, f"cannot compute with {self._kind(side)}; allowed: numbers, strings, "
                                  "lists and tuples", "operand", type(side).__name__)  # fmt: skip
        sized = [s for s in (left, right) if isinstance(s, str | list | tuple)]
        if sized:
            self._check_sequence_arith(op, left, right, sized, node)
        else:
            self._check_power(op, left, right, node)
        try:
            result = fn(left, right)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            raise self._error(node, f"cannot compute {self._kind(left)} {_OP_TEXT[type(op)]} {self._kind(right)}: "
                              f"{exc}", "operand", f"{quote(left)} {_OP_TEXT[type(op)]} {quote(right)}") from None  # fmt: skip
        if isinstance(result, complex):
            raise self._error(
                node, "the result is a complex number; allowed: real numbers", "operand", str(result)
            )
        if isinstance(result, str):
            self._new_chars(len(result), node)
        elif isinstance(result, list | tuple):
            self._charge(len(result))
        return self._value(result, node)

    def _number_arith(
        self, fn: Callable[[Any, Any], Any], op: ast.operator, left: Any, right: Any, node: ast.AST
    ) -> Any:
        """+ - * / // % on two numbers."""
        try:
            result = fn(left, right)
        except (ZeroDivisionError, OverflowError) as exc:
            raise self._error(node, f"cannot compute {quote(left)} {_OP_TEXT[type(op)]} {quote(right)}: {exc}",
                              "operand", f"{quote(left)} {_OP_TEXT[type(op)]} {quote(right)}") from None  # fmt: skip
        return result if type(result) is not int else self._value(result, node)

    def _check_sequence_arith(
        self, op: ast.operator, left: Any, right: Any, sized: list[Any], node: ast.AST
    ) -> None:
        """Refuse %-formatting, and a repeat or join whose result would pass the size limits."""
        if isinstance(op, ast.Mod) and isinstance(left, str):
            raise self._error(node, "string % formatting is not allowed; allowed: f-strings", "operator", "%")
        if isinstance(op, ast.Mult):
            count = right if isinstance(left, str | list | tuple) else left
            if isinstance(count, int) and not isinstance(count, bool):
                self._check_result_size(len(sized[0]) * max(count, 0), sized[0], "repeating", node)
        elif isinstance(op, ast.Add) and len(sized) == 2:
            self._check_result_size(len(sized[0]) + len(sized[1]), sized[0], "joining", node)

    def _check_result_size(self, size: int, sample: Any, verb: str, node: ast.AST) -> None:
        limit = self.limits.max_string_chars if isinstance(sample, str) else self.limits.max_items
        if size > limit:
            raise self._error(node, f"{verb} makes {size} items; allowed: at most {limit}", "size", size)

    def _check_power(self, op: ast.operator, left: Any, right: Any, node: ast.AST) -> None:
        """Refuse an integer power whose result would pass the integer size limit, before computing it."""
        if (
            isinstance(op, ast.Pow)
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * (abs(left).bit_length() - 1) > self.limits.max_int_bits
        ):
            raise self._error(node, f"{left} ** {right} is too large; allowed: integers of at most "
                              f"{self.limits.max_int_bits} bits", "integer", f"{left} ** {right}")  # fmt: skip

    def _unary(self, node: ast.UnaryOp) -> Any:
        value = self._eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not self._truth(value, node)
        if not isinstance(value, int | float):
            raise self._error(
                node, f"cannot negate {self._kind(value)}; allowed: a number", "operand", quote(value)
            )
        return _UNARY[type(node.op)](value)

    def _boolop(self, node: ast.BoolOp) -> Any:
        value: Any = None
        for expr in node.values:
            value = self._eval(expr)
            truth = self._truth(value, expr)
            if truth != isinstance(node.op, ast.And):
                return value
        return value

    def _compare(self, node: ast.Compare) -> bool:
        left = self._eval(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self._eval(right_node)
            self._scalar(left, node, "compared value")
            if isinstance(op, ast.In | ast.NotIn) and isinstance(right, range):
                # range's own test is linear for anything but an int: decide it here in O(1).
                whole = isinstance(left, int) or (isinstance(left, float) and left.is_integer())
                found = whole and int(left) in right
                ok = found if isinstance(op, ast.In) else not found
                if not ok:
                    return False
                left = right
                continue
            if isinstance(op, ast.In | ast.NotIn) and isinstance(right, list | tuple | dict):
                # Each item compares against a scalar: the cost is the item count.
                self._charge(len(right) * (1 + (len(left) // 1000 if isinstance(left, str) else 0)))
            else:
                self._scalar(right, node, "compared value")
                if isinstance(right, str):
                    # A substring search reads the whole text, about ten times slower per character
                    # than an equality test (measured), so it is charged ten times more.
                    per = 100 if isinstance(op, ast.In | ast.NotIn) else 1000
                    self._charge((len(right) + (len(left) if isinstance(left, str) else 0)) // per)
            try:
                ok = _CMPOPS[type(op)](left, right)
            except (TypeError, ValueError, OverflowError) as exc:
                raise self._error(node, f"cannot compare {quote(left)} with {quote(right)}: {exc}", "comparison",
                                  quote(left)) from None  # fmt: skip
            if not ok:
                return False
            left = right
        return True

    def _ifexp(self, node: ast.IfExp) -> Any:
        return self._eval(node.body if self._truth(self._eval(node.test), node) else node.orelse)

    def _subscript(self, node: ast.Subscript) -> Any:
        container = self._eval(node.value)
        if not isinstance(container, list | tuple | str | dict | range):
            raise self._error(node, f"cannot index {self._kind(container)}; allowed: a list, tuple, string, dict "
                              "or range", "index", type(container).__name__)  # fmt: skip
        if isinstance(node.slice, ast.Slice):
            bounds = [
                None if e is None else self._eval(e)
                for e in (node.slice.lower, node.slice.upper, node.slice.step)
            ]
            for b in bounds:
                if b is not None and (not isinstance(b, int) or isinstance(b, bool)):
                    raise self._error(
                        node, f"slice bounds must be integers, got {quote(b)}", "slice", quote(b)
                    )
            if isinstance(container, dict):
                raise self._error(node, "a dict cannot be sliced; allowed: d[key]", "slice", "dict")
            try:
                result = container[slice(*bounds)]
            except (ValueError, OverflowError) as exc:
                raise self._error(node, f"bad slice: {exc}", "slice", str(bounds)) from None
            if isinstance(result, str):
                self._new_chars(len(result), node)
            elif isinstance(result, list | tuple):
                self._charge(len(result))
            return result
        key = self._eval(node.slice)
        self._scalar(key, node, "index")
        try:
            return container[key]
        except (IndexError, KeyError, TypeError, OverflowError) as exc:
            raise self._error(node, f"index {quote(key)} is not valid for {self._kind(container)} "
                              f"({type(exc).__name__}); allowed: an existing index or key", "index", key) from None  # fmt: skip

    # ----------------------------------------------------------------- comprehensions
    def _comprehend(
        self, generators: list[ast.comprehension], emit: Callable[[], None], node: ast.AST
    ) -> None:
        def level(i: int) -> None:
            if i == len(generators):
                emit()
                return
            gen = generators[i]
            for item in self._iterate(self._eval(gen.iter), node):
                self._assign(gen.target, item)
                if all(self._truth(self._eval(cond), cond) for cond in gen.ifs):
                    level(i + 1)

        self.scopes.append({})
        try:
            level(0)
        finally:
            self.scopes.pop()

    def _listcomp(self, node: ast.ListComp | ast.GeneratorExp) -> list[Any]:
        out: list[Any] = []

        def emit() -> None:
            out.append(self._eval(node.elt))
            if len(out) > self.limits.max_items:
                self._value(out, node)

        self._comprehend(node.generators, emit, node)
        return out

    def _dictcomp(self, node: ast.DictComp) -> dict[Any, Any]:
        out: dict[Any, Any] = {}

        def emit() -> None:
            key = self._eval(node.key)
            self._scalar(key, node, "dict key")
            out[key] = self._eval(node.value)
            self._value(out, node)

        self._comprehend(node.generators, emit, node)
        return out

    # ----------------------------------------------------------------- calls
    def _call(self, node: ast.Call) -> Any:
        if isinstance(node.func, ast.Attribute):
            return self._method(node, node.func)
        func = self._eval(node.func)
        if func is _CANVAS:
            if node.args or node.keywords:
                raise self._error(node, "Canvas() takes no arguments; allowed: canvas = Canvas()", "Canvas",
                                  len(node.args) + len(node.keywords))  # fmt: skip
            if len(self.canvases) >= self.limits.max_canvases:
                raise self._error(node, f"too many Canvas() calls; allowed: at most {self.limits.max_canvases}",
                                  "Canvas", len(self.canvases) + 1)  # fmt: skip
            canvas = Canvas(max_regions=self.limits.max_regions)
            self.canvases.append(canvas)
            return canvas
        if not isinstance(func, Builtin):
            raise self._error(node, f"{self._kind(func)} cannot be called; allowed: Canvas(), float, int, str, len, "
                              "range, enumerate, zip, min, max, round", "call", quote(func))  # fmt: skip
        if node.keywords:
            raise self._error(node, f"{func.name}() takes no keyword arguments here; allowed: positional "
                              "arguments", "keyword", node.keywords[0].arg)  # fmt: skip
        name = func.name
        low, high = _ARITY[name]
        if not low <= len(node.args) <= high:
            raise self._error(node, f"{name}() takes {low}-{high} arguments, got {len(node.args)}", name,
                              len(node.args))  # fmt: skip
        args = [self._eval(a) for a in node.args]
        try:
            result = self._builtins[name](node, *args)
        except OmostError:
            raise
        except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
            raise self._error(
                node, f"{name}() failed: {exc}", name, ", ".join(quote(a) for a in args)
            ) from None
        return self._value(result, node)

    def _method(self, node: ast.Call, attr: ast.Attribute) -> None:
        target = self._eval(attr.value)
        name = attr.attr
        if not isinstance(target, Canvas):
            raise self._error(node, f".{name}() can only be called on the canvas, not on {self._kind(target)}; "
                              "allowed: canvas = Canvas() first", name, type(target).__name__)  # fmt: skip
        params = _METHODS[name]
        bound: dict[str, Any] = {}
        if len(node.args) > len(params):
            raise self._error(node, f"{name}() takes {len(params)} arguments but {len(node.args)} were given; "
                              f"allowed: {', '.join(params)}", name, len(node.args))  # fmt: skip
        for param, arg in zip(params, node.args, strict=False):
            bound[param] = self._eval(arg)
        for kw in node.keywords:
            if kw.arg not in params:
                raise self._error(node, f"{name}() got an unknown argument {kw.arg!r}; allowed: {', '.join(params)}",
                                  str(kw.arg), kw.arg)  # fmt: skip
            if kw.arg in bound:
                raise self._error(node, f"{name}() got argument {kw.arg!r} twice; allowed: each of "
                                  f"{', '.join(params)} once", kw.arg, kw.arg)  # fmt: skip
            bound[kw.arg] = self._eval(kw.value)
        missing = [p for p in params if p not in bound]
        if missing:
            raise self._error(node, f"{name}() is missing the argument{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(missing)}; allowed: all of {', '.join(params)}", missing[0], None)  # fmt: skip
        work = target.work
        try:
            getattr(target, name)(**bound)
        except OmostError as exc:
            raise OmostError(exc.message, parameter=exc.parameter, value=exc.value, allowed=exc.allowed,
                             line=node.lineno) from None  # fmt: skip
        # A call costs a base amount plus the canvas's own work (text handled, fuzzy name matches).
        self._charge(self.limits.canvas_call_steps + target.work - work)
        return None

    # ----------------------------------------------------------------- builtins (all take the call node first)
    def _float(self, node: ast.AST, value: Any = 0.0) -> float:
        self._scalar(value, node, "float() argument")
        if isinstance(value, str) and len(value) > 100:
            raise self._error(node, "float() of a string longer than 100 characters", "float", value[:40])
        return float(value)

    def _int(self, node: ast.AST, value: Any = 0, *base: int) -> int:
        self._scalar(value, node, "int() argument")
        if isinstance(value, str) and len(value) > 30:
            raise self._error(node, "int() of a string longer than 30 characters", "int", value[:40])
        return int(value, *base)

    def _str(self, node: ast.AST, value: Any = "") -> str:
        self._scalar(value, node, "str() argument")
        text = str(value)
        self._new_chars(len(text), node)
        return text

    def _len(self, node: ast.AST, value: Any) -> int:
        if not isinstance(value, str | list | tuple | dict | range):
            raise self._error(node, f"len() of {self._kind(value)}; allowed: a string, list, tuple, dict or range",
                              "len", type(value).__name__)  # fmt: skip
        return len(value)

    def _range(self, node: ast.AST, *args: Any) -> range:
        for a in args:
            if not isinstance(a, int) or isinstance(a, bool):
                raise self._error(node, f"range() takes integers, got {quote(a)}", "range", quote(a))
        return range(*args)

    def _sized_list(self, node: ast.AST, value: Any, fn: str) -> Any:
        if not isinstance(value, list | tuple | str | range | dict):
            raise self._error(node, f"{fn}() of {self._kind(value)}; allowed: a list, tuple, string, dict or range",
                              fn, type(value).__name__)  # fmt: skip
        if len(value) > self.limits.max_items:
            raise self._error(node, f"{fn}() of {len(value)} items; allowed: at most {self.limits.max_items}", fn,
                              len(value))  # fmt: skip
        self._charge(len(value))
        return value

    def _enumerate(self, node: ast.AST, value: Any, start: int = 0) -> list[tuple[int, Any]]:
        if not isinstance(start, int) or abs(start) > 2**62:
            raise self._error(
                node, f"enumerate() start must be an integer, got {quote(start)}", "enumerate", start
            )
        return list(enumerate(self._sized_list(node, value, "enumerate"), start))

    def _zip(self, node: ast.AST, *values: Any) -> list[tuple[Any, ...]]:
        return list(zip(*(self._sized_list(node, v, "zip") for v in values), strict=False))

    def _minmax(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(node: ast.AST, *args: Any) -> Any:
            items = self._sized_list(node, args[0], fn.__name__) if len(args) == 1 else args
            for item in items:
                self._scalar(item, node, f"{fn.__name__}() item")
            return fn(items)

        return call

    def _round(self, node: ast.AST, value: Any, ndigits: Any = None) -> Any:
        if not isinstance(value, int | float):
            raise self._error(node, f"round() takes a number, got {quote(value)}", "round", quote(value))
        if ndigits is None:
            return round(value)
        if not isinstance(ndigits, int) or not -20 <= ndigits <= 20:
            raise self._error(node, f"round() digits must be an integer from -20 to 20, got {quote(ndigits)}",
                              "round", quote(ndigits))  # fmt: skip
        return round(value, ndigits)


_CANVAS = _CanvasClass()
# Builtin -> (min, max) positional arguments.
_ARITY = {
    "float": (0, 1), "int": (0, 2), "str": (0, 1), "len": (1, 1), "range": (1, 3), "enumerate": (1, 2),
    "zip": (1, 8), "min": (1, 1000), "max": (1, 1000), "round": (1, 2),
}  # fmt: skip
_OP_TEXT = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}


def interpret(source: str, *, limits: Limits = DEFAULT_LIMITS) -> Canvas:
    """Run a canvas program and return the Canvas left in its ``canvas`` variable."""
    interp = Interpreter(limits=limits)
    variables = interp.run(source)
    canvas = variables.get("canvas")
    if not isinstance(canvas, Canvas):
        got = "is never assigned" if "canvas" not in variables else f"holds {interp._kind(canvas)}"
        raise OmostError(
            f"the program makes no canvas: the variable 'canvas' {got}; allowed: a program that starts with "
            "canvas = Canvas() and keeps it",
            parameter="canvas",
            value=None if canvas is None else type(canvas).__name__,
            allowed="canvas = Canvas()",
        )
    return canvas


def complete_prefix(source: str) -> ast.Module | None:
    """The longest prefix of ``source`` that parses, cut after a complete top-level statement.

    ``source`` is a program still being written (an LLM reply streaming in). A statement counts as
    complete once its line has ended outside any brackets, so a trailing ``x = 5`` that may still
    grow into ``x = 50`` is left out until its newline arrives; a call statement whose closing
    parenthesis ends the text counts as complete. Returns None when no complete statement is
    there yet.
    """
    # A call that has closed at the very end is complete too: nothing a canvas program writes
    # continues a finished canvas.add_local_description(...) call.
    if source.rstrip(" \t").endswith(")"):
        with contextlib.suppress(SyntaxError, ValueError, RecursionError, MemoryError, SystemError):
            whole = parse_python(source)
            if (
                whole.body
                and isinstance(whole.body[-1], ast.Expr)
                and isinstance(whole.body[-1].value, ast.Call)
            ):
                return whole
    lines = source.splitlines(keepends=True)
    # Candidate cut points: before each line that starts at column 0 (a new top-level statement),
    # from the last one backwards.
    offsets, pos = [], 0
    for line in lines:
        if line[:1] not in ("", " ", "\t", "\n", "\r", "#", ")", "]", "}"):
            offsets.append(pos)
        pos += len(line)
    # After a newline outside brackets a simple statement cannot grow any more: try the text up
    # to the last newline first, then the earlier top-level line starts.
    last_newline = source.rfind("\n") + 1
    cuts = sorted(c for c in {*offsets, last_newline} if c > 0)

    def parse(cut: int) -> ast.Module | None:
        try:
            return parse_python(source[:cut])
        except (SyntaxError, ValueError, RecursionError, MemoryError, SystemError):
            return None

    # Usually the last statement or two are unfinished: try the last few cuts, then search the
    # rest by halving (prefixes that parse come first; a broken statement fails every cut after
    # it), so a program broken early costs a handful of parses, not one per line.
    for cut in reversed(cuts[-_LINEAR_CUTS:]):
        tree = parse(cut)
        if tree is not None:
            return tree
    low, high, best = 0, len(cuts) - _LINEAR_CUTS - 1, None
    while low <= high:
        middle = (low + high) // 2
        tree = parse(cuts[middle])
        if tree is None:
            high = middle - 1
        else:
            best, low = tree, middle + 1
    return best


def interpret_partial(source: str, *, limits: Limits = DEFAULT_LIMITS) -> list[Condition]:
    """Conditions of the canvas calls completed so far in a program that is still streaming in.

    Runs the complete top-level statements (see ``complete_prefix``) of the ``canvas`` variable's
    program; the incomplete tail is ignored. Returns the global condition first when it is set,
    then the regions far to near. Never raises: a refused or failing statement stops the run and
    what was drawn before it is returned (the final ``parse_reply`` reports the error).
    """
    if not isinstance(source, str) or len(source) > limits.max_source_chars:
        return []
    tree = complete_prefix(source)
    if tree is None:
        return []
    interp = Interpreter(limits=limits)
    try:
        check(tree, limits)
    except OmostError:
        return []
    with contextlib.suppress(OmostError, _Break, _Continue):
        interp.run_statements(tree.body)
    canvas = interp.variables.get("canvas")
    if not isinstance(canvas, Canvas):
        canvas = interp.canvases[-1] if interp.canvases else None
    return canvas.conditions() if canvas is not None else []
