import pytest

from omost_engine.llm.incremental import IncrementalCanvas
from omost_engine.llm.scripted import split_tokens
from omost_engine.reply import parse_reply


@pytest.mark.parametrize("case", ["01", "02"])
def test_every_cut_of_a_golden_reply_reads_without_error_and_regions_only_grow(
    golden_reply, case: str
) -> None:
    reply = golden_reply(case)
    final = tuple(parse_reply(reply).conditions)
    canvas = IncrementalCanvas()
    seen: list[int] = []
    for cut in range(len(reply) + 1):  # every position: each character is one piece
        if cut:
            canvas.feed(reply[cut - 1])
        assert canvas.text == reply[:cut]
        seen.append(len(canvas.conditions))
        # Every condition found so far is one of the final program's.
        assert set(canvas.conditions) <= set(final)
    assert seen == sorted(seen)
    canvas.finish()
    assert canvas.conditions == final
    assert seen[-1] == len(final)  # the last call was complete before the closing fence arrived


@pytest.mark.parametrize("case", ["01", "02"])
def test_regions_appear_one_call_at_a_time(golden_reply, case: str) -> None:
    reply = golden_reply(case)
    canvas = IncrementalCanvas()
    counts = []
    for token in split_tokens(reply):
        if canvas.feed(token):
            counts.append(len(canvas.conditions))
    final = len(parse_reply(reply).conditions)
    assert counts == list(range(1, final + 1))  # the global, then one more region per completed call
    # Interpreting only after ")" + newline keeps the work far below one run per piece.
    assert canvas.interpretations < len(split_tokens(reply)) / 10


def test_prose_before_the_program_and_no_program_at_all() -> None:
    canvas = IncrementalCanvas()
    for token in split_tokens("Sure (here it is):\nno code at all (yet)\n"):
        canvas.feed(token)
    assert canvas.conditions == ()
    canvas.finish()
    assert canvas.conditions == ()
