"""Finding the program in an LLM reply, and reading a program that is still streaming in."""

from __future__ import annotations

import pytest

from omost_engine.errors import OmostError
from omost_engine.interpreter import complete_prefix, interpret_partial
from omost_engine.reply import extract_code, parse_reply

PROGRAM = "canvas = Canvas()\ncanvas.set_global_description('A lake.', ['Calm water.'], 'lake', 'steelblue')"


@pytest.mark.parametrize(
    "reply",
    [
        f"```python\n{PROGRAM}\n```",
        f"Here you go:\r\n```python\r\n{PROGRAM.replace(chr(10), chr(13) + chr(10))}\r\n```\r\nEnjoy!",
        f"```py\n{PROGRAM}\n```",
        f"```python3\n{PROGRAM}\n```",
        f"```Python\n{PROGRAM}\n```",
        f"```python   \n{PROGRAM}\n```",
        f"``` python\n{PROGRAM}\n   ```",
        f"```\n{PROGRAM}\n```",  # an untagged block that makes a canvas
        PROGRAM,  # no fence at all (golden 22)
        f"\n\n{PROGRAM}\n\n",
        f"```text\nnotes\n```\n```python\n{PROGRAM}\n```\n```python\nraise Boom\n```",  # first python block wins
        f"```python\nprint('a snippet')\n```\n```python\n{PROGRAM}\n```",  # ... that makes a canvas
    ],
)
def test_the_program_is_found_in_tolerant_ways(reply: str) -> None:
    assert extract_code(reply) == PROGRAM
    assert parse_reply(reply).conditions[0].prefixes == ("A lake.",)


def test_an_unterminated_block_is_read_to_the_end_while_streaming() -> None:
    assert extract_code("```python\ncanvas = Canvas()\ncanvas.set_gl") == "canvas = Canvas()\ncanvas.set_gl"


@pytest.mark.parametrize(
    "reply", ["", "Sorry, I cannot draw that.", "```text\nhello\n```", "```\nx = 1\n```"]
)
def test_a_reply_without_a_program_is_one_clear_error(reply: str) -> None:
    assert extract_code(reply) is None
    with pytest.raises(
        OmostError, match="the reply contains no canvas program; allowed: a ```python"
    ) as info:
        parse_reply(reply)
    assert info.value.parameter == "reply"


def test_python_blocks_without_a_canvas_report_the_first_one() -> None:
    assert extract_code("```python\nx = 1\n```\n```python\ny = 2\n```") == "x = 1"


def test_code_that_makes_no_canvas_is_one_clear_error() -> None:
    with pytest.raises(OmostError, match="the program makes no canvas"):
        parse_reply("```python\nx = 1\n```")


def test_a_python_block_that_is_not_python_names_the_line() -> None:
    with pytest.raises(OmostError, match="line 2: the program is not valid Python"):
        parse_reply("```python\ncanvas = Canvas()\nhere are some words\n```")


# ----------------------------------------------------------------------------- streaming


def test_partial_program_conditions_grow_as_the_reply_streams(golden, golden_program) -> None:
    code = golden_program("01")
    final = parse_reply(golden("01")["bot_response"]).conditions
    counts = []
    for end in range(0, len(code) + 1, 89):
        conditions = interpret_partial(code[:end])
        counts.append(len(conditions))
        # Whatever is shown is exactly what the final layout will hold for those calls.
        for cond in conditions:
            assert cond in final
    assert counts == sorted(counts) and counts[0] == 0 and 0 < max(counts) < len(final)
    assert interpret_partial(code) == final  # the program file ends with a newline: all complete
    block = extract_code(golden("01")["bot_response"])  # no newline after the last call's ")"
    assert block is not None and interpret_partial(block) == final


def test_partial_program_ignores_an_incomplete_tail_and_stops_at_errors() -> None:
    head = PROGRAM + "\n"
    assert len(interpret_partial(head + "canvas.add_local_description(location='on the le")) == 1
    assert len(interpret_partial(head + "x = 5")) == 1  # may still grow: not run, but nothing breaks
    assert interpret_partial("canvas = Canv") == []
    assert interpret_partial(head + "import os\n") == []  # refused code shows nothing
    assert (
        len(interpret_partial(head + "x = undefined\nmore = 1\n")) == 1
    )  # a failing statement keeps the rest
    assert interpret_partial(12) == []  # type: ignore[arg-type]


def test_complete_prefix_cuts_after_whole_statements() -> None:
    tree = complete_prefix("a = 1\nb = [\n  2,\n")
    assert tree is not None and len(tree.body) == 1
    assert complete_prefix("a = (1") is None
    tree = complete_prefix("a = 1\nb = 2\n")
    assert tree is not None and len(tree.body) == 2
    tree = complete_prefix("a = 1\nf(\n  2,\n)")  # a call closed at the very end is complete
    assert tree is not None and len(tree.body) == 2
    tree = complete_prefix("a = 1\nb = f(2)")  # an assignment may still grow: not yet
    assert tree is not None and len(tree.body) == 1


def test_complete_prefix_of_a_program_broken_early_stays_cheap(golden_program, monkeypatch) -> None:
    import ast as ast_module

    code = golden_program("01")
    broken = code.replace(
        "canvas.add_local_description(", "canvas.add_local_description((", 1
    )  # never closes
    calls = []
    real_parse = ast_module.parse
    monkeypatch.setattr(
        ast_module, "parse", lambda text, *a, **k: calls.append(1) or real_parse(text, *a, **k)
    )
    tree = complete_prefix(broken + "\n".join(f"x{i} = {i}" for i in range(300)) + "\n")
    assert tree is not None and len(tree.body) == 2  # canvas = Canvas() and the global call
    assert len(calls) <= 15  # not one parse per line (there are over 300 candidate cuts)
