"""The decode loop's parts, each alone: planning a pass, verifying a draft, committing and rewinding."""

from __future__ import annotations

import pytest
import torch

from omost_engine.llm.decoding.commit import Output, next_feed, trim_cache
from omost_engine.llm.decoding.grammar import GrammarFactory, GrammarLimits
from omost_engine.llm.decoding.planning import CLOSING_MARGIN, Ending, ForcedRun, Planner
from omost_engine.llm.decoding.prompt_lookup import PromptLookup
from omost_engine.llm.decoding.sequences import common_prefix_length
from omost_engine.llm.decoding.verification import Verifier
from omost_engine.progress import CancelToken
from omost_engine.reply import parse_reply

VOCAB = 8
STOP = 7
HEAD = (
    "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='A dragon',\n"
    "    detailed_descriptions=[],\n    tags='t',\n    HTML_web_color_name='red',\n)\n"
)


@pytest.fixture(scope="module")
def grammar_kit() -> tuple:
    from omost_engine.testing.tiny_llm import build_tokenizer

    tokenizer = build_tokenizer()
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    return (
        tokenizer,
        stop,
        GrammarFactory(tokenizer, limits=GrammarLimits(max_locals=1), stop_token_ids=[stop]),
    )


def state_after(kit: tuple, text: str):
    tokenizer, _, factory = kit
    state = factory.matcher()
    for token in tokenizer.encode(text, add_special_tokens=False):
        assert state.accept(token)
    return state


def rows(*winners: int) -> torch.Tensor:
    """Logits whose argmax at row i is winners[i]."""
    logits = torch.zeros(len(winners), VOCAB)
    for row, token in enumerate(winners):
        logits[row, token] = 5.0
    return logits


def argmax(row: torch.Tensor) -> int:
    return int(torch.argmax(row))


class Cache:
    """A cache length that commit/rewind cut back (the part of a Stepper they use)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.cuts: list[int] = []

    def truncate(self, length: int) -> None:
        self.cuts.append(length)
        self.length = min(self.length, length)


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([], [1]) == common_prefix_length([9], [1]) == 0


# --- planning ------------------------------------------------------------------------------------


def test_without_a_grammar_the_plan_is_the_budget_and_a_lookup_draft() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 1, 2])
    planner = Planner(
        grammar=None, lookup=lookup, draft_tokens=2, forcing=True, stop_ids=(STOP,), stops=frozenset({STOP})
    )
    assert planner.before_pass(9) == ForcedRun(tokens=(), limit=9)
    assert planner.before_pass(0) == Ending(reason="length")
    assert planner.end_without_pass() is None
    assert planner.draft(limit=9) == [3, 4]  # the draft length caps it
    assert planner.draft(limit=1) == [3]  # and so does the room left in the pass


def test_the_forced_run_is_accepted_and_leaves_the_room_after_it(grammar_kit) -> None:
    tokenizer, stop, factory = grammar_kit
    state = factory.matcher()
    planner = Planner(
        grammar=state, lookup=None, draft_tokens=20, forcing=True, stop_ids=(stop,), stops=frozenset({stop})
    )
    before = planner.before_pass(1000)
    assert isinstance(before, ForcedRun) and before.tokens
    assert "```python\n".startswith(tokenizer.decode(list(before.tokens)))
    assert before.limit == 1000 - planner.reserve - len(before.tokens)
    assert planner.reserve == factory.call_tokens + CLOSING_MARGIN
    assert state.allowed_tokens() != factory.matcher().allowed_tokens()  # the matcher moved past the run
    # Without forcing nothing is appended before the pass.
    off = Planner(
        grammar=factory.matcher(),
        lookup=None,
        draft_tokens=20,
        forcing=False,
        stop_ids=(stop,),
        stops=frozenset({stop}),
    )
    assert off.before_pass(1000) == ForcedRun(tokens=(), limit=1000 - off.reserve)


def test_a_budget_inside_the_reserve_closes_the_program_without_a_pass(grammar_kit) -> None:
    tokenizer, stop, _ = grammar_kit
    text = HEAD + "\ncanvas.add_local_description(\n    location='on the"
    planner = Planner(
        grammar=state_after(grammar_kit, text),
        lookup=None,
        draft_tokens=20,
        forcing=True,
        stop_ids=(stop,),
        stops=frozenset({stop}),
    )
    ending = planner.before_pass(planner.reserve)
    assert isinstance(ending, Ending) and ending.reason == "stop" and ending.end == (stop,)
    parse_reply(text + tokenizer.decode(list(ending.closing)))
    # An ending that fills the budget leaves no room for the end token: the reply stops at the length.
    short = Planner(
        grammar=state_after(grammar_kit, text),
        lookup=None,
        draft_tokens=20,
        forcing=True,
        stop_ids=(stop,),
        stops=frozenset({stop}),
    )
    cut = short.before_pass(3)
    assert cut == Ending(reason="length", closing=ending.closing[:3])


def test_a_complete_program_ends_with_the_end_token_and_no_pass(grammar_kit) -> None:
    _, stop, _ = grammar_kit
    state = state_after(grammar_kit, HEAD + "```")
    planner = Planner(
        grammar=state, lookup=None, draft_tokens=20, forcing=True, stop_ids=(stop,), stops=frozenset({stop})
    )
    before = planner.before_pass(1000)
    assert before == ForcedRun(tokens=(), limit=1000 - planner.reserve)
    assert planner.end_without_pass() == Ending(reason="stop", end=(stop,))
    assert state.accept(stop)
    assert planner.before_pass(1000) == Ending(reason="stop")  # terminated


def test_the_draft_is_cut_where_the_grammar_refuses_and_the_matcher_stays(grammar_kit) -> None:
    tokenizer, stop, _ = grammar_kit
    state = state_after(grammar_kit, HEAD)
    allowed = state.allowed_tokens()
    good = tokenizer.encode("\ncanvas.add_local_description(\n", add_special_tokens=False)
    bad = tokenizer.encode("import os", add_special_tokens=False)
    lookup = PromptLookup([5, *good, *bad, 6, 5])
    planner = Planner(
        grammar=state, lookup=lookup, draft_tokens=50, forcing=True, stop_ids=(stop,), stops=frozenset({stop})
    )
    assert planner.draft(limit=50) == good
    assert state.allowed_tokens() == allowed


# --- verification --------------------------------------------------------------------------------


def verifier(**options) -> Verifier:
    return Verifier(
        pick=options.pop("pick", argmax),
        grammar=options.pop("grammar", None),
        forcing=options.pop("forcing", False),
        stops=options.pop("stops", frozenset({STOP})),
        **options,
    )


def test_a_draft_the_model_agrees_with_is_kept_and_the_last_row_adds_a_token() -> None:
    verdict = verifier().check(rows(3, 4, 5), [3, 4], limit=10)
    assert verdict.accepted == [3, 4] and verdict.new_token == 5 and verdict.tail == []
    assert verdict.tokens == [3, 4, 5] and verdict.unfed == [5] and verdict.sampled == 1


def test_the_first_disagreement_supplies_the_new_token() -> None:
    verdict = verifier().check(rows(3, 6, 5), [3, 4], limit=10)
    assert verdict.accepted == [3] and verdict.new_token == 6 and verdict.tokens == [3, 6]


def test_a_kept_stop_token_or_the_limit_ends_the_check() -> None:
    stopped = verifier().check(rows(3, STOP, 5), [3, STOP], limit=10)
    assert stopped.accepted == [3, STOP] and stopped.new_token is None and stopped.unfed == []
    limited = verifier().check(rows(3, 4, 5), [3, 4], limit=1)
    assert limited.accepted == [3] and limited.new_token is None and limited.sampled == 0


def test_the_hook_sees_every_position_with_its_context() -> None:
    seen: list[list[int]] = []

    def hook(ids: list[int], row: torch.Tensor) -> torch.Tensor:
        seen.append(ids)
        return row

    verifier(hook=hook).check(rows(3, 4, 5), [3, 4], limit=10, context=[1, 2])
    assert seen == [[1, 2], [1, 2, 3], [1, 2, 3, 4]]


def test_a_draft_that_leaves_a_forced_run_keeps_the_run_as_the_tail(grammar_kit) -> None:
    tokenizer, stop, factory = grammar_kit
    opened = HEAD[: HEAD.index("A dragon") + len("A dragon")]  # inside the description string
    state = state_after(grammar_kit, opened)
    quote = factory.byte_token[b"'"]
    run = state_after(grammar_kit, opened + "'").forced_tokens()  # ",\n    detailed_descriptions=..."
    assert len(run) > 1
    wrong = next(t for t in range(len(tokenizer)) if t not in run)
    draft = [quote, run[0], wrong]
    logits = torch.zeros(len(draft) + 1, len(tokenizer))
    logits[0, quote] = 5.0  # the model closes the string as drafted; the run then comes forced
    check = Verifier(pick=argmax, grammar=state, forcing=True, stops=frozenset({stop}))
    verdict = check.check(logits, draft, limit=50)
    assert verdict.accepted == [quote, run[0]] and verdict.tail == run[1:] and verdict.new_token is None
    assert verdict.forced == len(run) and verdict.sampled == 0
    assert tokenizer.decode(verdict.tokens).startswith("',\n    detailed_descriptions")


def test_a_token_the_grammar_refuses_is_dropped_and_reported(grammar_kit) -> None:
    tokenizer, stop, _ = grammar_kit
    state = state_after(grammar_kit, HEAD)
    refused = tokenizer.encode("import", add_special_tokens=False)[0]
    check = Verifier(pick=lambda row: refused, grammar=state, forcing=False, stops=frozenset({stop}))
    verdict = check.check(torch.zeros(1, len(tokenizer)), [], limit=10)
    assert verdict.refused and verdict.new_token is None and verdict.tokens == [] and verdict.sampled == 1


# --- commit and rewind ---------------------------------------------------------------------------


def test_commit_hands_tokens_out_in_order_and_feeds_the_lookup() -> None:
    seen: list[int] = []
    lookup = PromptLookup([1, 2])
    output = Output(on_token=seen.append, lookup=lookup)
    assert output.commit([3, 4]) and output.commit([])
    assert seen == output.tokens == [3, 4] and lookup.tokens.tolist() == [1, 2, 3, 4]
    assert output.finish([STOP], "stop") == "stop" and output.tokens == [3, 4, STOP]


def test_a_cancel_in_a_callback_drops_the_rest_of_the_run() -> None:
    cancel = CancelToken()
    lookup = PromptLookup([1])
    seen: list[int] = []

    def on_token(token: int) -> None:
        seen.append(token)
        if token == 4:
            cancel.cancel()

    output = Output(on_token=on_token, cancel=cancel, lookup=lookup)
    assert not output.commit([3, 4, 5, 6])
    assert output.tokens == seen == [3, 4] and lookup.tokens.tolist() == [1, 3, 4]
    assert output.cancelled and output.finish([7], "stop") == "cancelled" and output.tokens == [3, 4]


def test_rewind_keeps_the_accepted_prefix_and_feeds_the_undecided_next() -> None:
    cache = Cache(20)  # the pass fed 20 positions; 15 are kept
    assert next_feed(cache, kept_length=15, unfed=[8, 9], reply=[1, 2, 3]) == [8, 9]
    assert cache.length == 15


def test_a_pass_ending_on_a_kept_draft_token_steps_back_one_to_refeed_it() -> None:
    cache = Cache(20)
    assert next_feed(cache, kept_length=20, unfed=[], reply=[1, 2, 3]) == [3]
    assert cache.length == 19 and cache.cuts == [20, 19]


def test_the_cache_ends_no_longer_than_prompt_and_reply() -> None:
    cache = Cache(30)
    trim_cache(cache, 25)
    assert cache.length == 25
    trim_cache(cache, 40)  # never grows
    assert cache.length == 25
