"""Grammar-constrained decoding: the canvas grammar, forced runs, and both options together."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omost_engine.llm.decoding.grammar import CanvasNames, GrammarFactory, GrammarLimits, canvas_grammar_ebnf
from omost_engine.llm.decoding.loop import CausalLMStepper, DecodeConfig, decode
from omost_engine.llm.decoding.oracle import TranscriptOracle
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from omost_engine.reply import parse_reply
from omost_engine.tables import COLORS, LOCATIONS

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"
# Small bounds keep random programs short (a test generates 20 of them).
SMALL = GrammarLimits(
    max_string_bytes=32, max_comment_bytes=16, max_list_items=2, max_locals=1, max_comment_lines=1
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    from omost_engine.testing.tiny_llm import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    return (
        tokenizer,
        build_model(tokenizer),
        stop,
        GrammarFactory(tokenizer, limits=SMALL, stop_token_ids=[stop]),
    )


@pytest.fixture(scope="module")
def program_grammar(program_tokenizer):
    stop = program_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    return program_tokenizer, stop, GrammarFactory(program_tokenizer, stop_token_ids=[stop])


def chat_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def feed_text(factory: GrammarFactory, text: str) -> tuple[bool, int]:
    """Accept ``text`` token by token; (all accepted, tokens accepted)."""
    state = factory.matcher()
    ids = factory.tokenizer.encode(text, add_special_tokens=False)
    for count, token in enumerate(ids):
        if not state.accept(token):
            return False, count
    return state.completed, len(ids)


def test_grammar_lists_every_allowed_name_from_the_tables() -> None:
    ebnf = canvas_grammar_ebnf(CanvasNames.from_tables())
    for name in (*LOCATIONS, *COLORS):
        assert f"\"'{name}'\"" in ebnf
    assert "'on the upper left'" not in ebnf


@pytest.mark.parametrize("case", ["01", "02", "03", "04"])
def test_the_published_format_is_accepted_token_by_token(program_grammar, golden_reply, case) -> None:
    _, _, factory = program_grammar
    assert feed_text(factory, golden_reply(case))[0]


@pytest.mark.parametrize(
    "change",
    [
        ("location='on the left'", "location='on the upper left'"),  # a name the original would fuzz-correct
        ("distance_to_viewer=5.0", "distance_to_viewer=0"),
        ("distance_to_viewer=5.0", "distance_to_viewer=-5.0"),
        ("HTML_web_color_name='firebrick'", "HTML_web_color_name='#ff0000'"),
        ("    atmosphere='Determined", "    mood='Determined"),  # unknown keyword
        ("    tags='warriors, armor", "    tags=['warriors', 'armor"),  # tags must be a string
        ("canvas = Canvas()", "import os\ncanvas = Canvas()"),
        ("A mighty dragon.", "A mighty\x00dragon."),  # control characters never fit in a string
    ],
)
def test_invalid_programs_are_refused(program_grammar, golden_reply, change) -> None:
    _, _, factory = program_grammar
    old, new = change
    reply = golden_reply("01")
    assert old in reply
    assert feed_text(factory, reply.replace(old, new, 1))[0] is False


def test_a_string_at_its_length_limit_can_only_close(tiny) -> None:
    tokenizer, _, _, factory = tiny
    state = factory.matcher()
    head = "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='"
    for token in tokenizer.encode(head + "x" * (SMALL.max_string_bytes - 1), add_special_tokens=False):
        assert state.accept(token)
    assert state.guard.mode == "'" and len(state.allowed_tokens()) > 1
    assert state.accept(tokenizer.encode("x", add_special_tokens=False)[0])
    quote = tokenizer.encode("'", add_special_tokens=False)
    assert state.allowed_tokens() == set(quote) and state.forced_tokens() == quote
    masked = state.mask_logits(torch.zeros(len(tokenizer)))
    assert torch.isfinite(masked).sum() == 1 and torch.isfinite(masked[quote[0]])
    state.rollback(1)  # rewinding the matcher rewinds the length count too
    assert len(state.allowed_tokens()) > 1


def test_random_tiny_model_always_writes_a_valid_program(tiny) -> None:
    """20 seeds of a random model under the constraint, prompt lookup on (the defaults): every reply
    is a program that the safe interpreter accepts."""
    tokenizer, model, stop, factory = tiny
    prompt = chat_ids(
        tokenizer,
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "a dragon fighting warriors"},
        ],
    )
    passes = tokens = 0
    for seed in range(20):
        config = DecodeConfig(seed=seed, temperature=0.6 if seed else 0.0, stop_ids=(stop,))
        result = decode(CausalLMStepper(model), prompt, config, grammar=factory.matcher())
        reply = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        assert result.stop_reason == "stop", (seed, reply)
        layout = parse_reply(reply)
        assert len(layout.conditions) >= 1
        passes += result.stats.forward_passes
        tokens += result.stats.tokens
    assert tokens / passes > 1.2  # forced runs and accepted drafts


def test_forced_runs_reproduce_the_first_turn_in_fewer_passes(program_grammar, golden_reply) -> None:
    tokenizer, stop, factory = program_grammar
    reply = golden_reply("01")
    prompt = chat_ids(
        tokenizer,
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "a dragon battle"}],
    )
    runs = {}
    for label, lookup in (("grammar", False), ("both", True)):
        oracle = TranscriptOracle(tokenizer, prompt_length=len(prompt), reply=reply, stop_id=stop)
        config = DecodeConfig(temperature=0.0, prompt_lookup=lookup, stop_ids=(stop,))
        result = decode(oracle, prompt, config, grammar=factory.matcher())
        assert tokenizer.decode(result.token_ids, skip_special_tokens=True) == reply
        assert result.stop_reason == "stop"
        runs[label] = result.stats
    assert runs["grammar"].forced > 0.1 * runs["grammar"].tokens
    assert runs["grammar"].tokens_per_pass > 1.15
    assert runs["both"].tokens_per_pass >= 1.5


def test_both_together_on_the_edit_turn(program_grammar, golden_reply) -> None:
    tokenizer, stop, factory = program_grammar
    first, edit = golden_reply("01"), golden_reply("02")
    prompt = chat_ids(
        tokenizer,
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "a dragon battle"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": "change the dragon to a dinosaur"},
        ],
    )
    outputs = {}
    for temperature, lookup in ((0.0, False), (0.0, True), (0.6, True)):
        oracle = TranscriptOracle(tokenizer, prompt_length=len(prompt), reply=edit, stop_id=stop)
        config = DecodeConfig(
            temperature=temperature, prompt_lookup=lookup, draft_tokens=20, stop_ids=(stop,)
        )
        result = decode(oracle, prompt, config, grammar=factory.matcher())
        assert tokenizer.decode(result.token_ids, skip_special_tokens=True) == edit
        outputs[temperature, lookup] = result.token_ids
        if lookup:
            assert result.stats.tokens_per_pass >= 4.0
            assert result.stats.forced > 0 and result.stats.accepted > 0
    # Drafts that cross forced runs are checked against them: the same tokens as without drafts.
    assert outputs[0.0, True] == outputs[0.0, False]


def test_the_remote_form_bounds_strings_in_the_grammar_itself(program_grammar) -> None:
    import xgrammar as xgr

    _, _, factory = program_grammar
    limits = GrammarLimits(max_string_bytes=30)
    ebnf = canvas_grammar_ebnf(CanvasNames.from_tables(), limits, bounded_text=True)
    compiled = xgr.GrammarCompiler(factory.info, max_threads=1).compile_grammar(ebnf)
    head = "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='"
    for length, fits in ((30, True), (31, False)):
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_string(head + "x" * length) is fits


def test_logits_processors_see_every_position_with_drafts_and_grammar(tiny, golden_reply) -> None:
    """transformers processors run through the hook on every checked position: a processor that forces
    golden 04 makes the random model write it, drafted from the history, under the grammar."""
    from omost_engine.llm.decoding.loop import processors_hook
    from omost_engine.testing.tiny_llm import forced_reply_processor

    tokenizer, model, stop, _ = tiny
    factory = GrammarFactory(tokenizer, stop_token_ids=[stop])
    reply = golden_reply("04")
    prompt = chat_ids(
        tokenizer,
        [
            {"role": "user", "content": "an apple"},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "the same again"},
        ],
    )
    hook = processors_hook([forced_reply_processor(tokenizer, reply, "<|eot_id|>")])
    config = DecodeConfig(seed=3, stop_ids=(stop,))
    result = decode(CausalLMStepper(model), prompt, config, grammar=factory.matcher(), logits_hook=hook)
    assert tokenizer.decode(result.token_ids, skip_special_tokens=True) == reply
    assert result.stop_reason == "stop" and result.stats.forced == 0
    assert result.stats.tokens_per_pass > 3


def test_a_string_limit_below_the_longest_name_is_refused(tiny) -> None:
    tokenizer = tiny[0]
    with pytest.raises(ValueError, match="at least 30"):  # "a medium-sized horizontal area"
        GrammarFactory(tokenizer, limits=GrammarLimits(max_string_bytes=20))


HEAD = (
    "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='A',\n"
    "    detailed_descriptions=[],\n    tags='t',\n    HTML_web_color_name='red',\n)\n\n"
)


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "```python\n# Initialize the can",  # inside a comment
        "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='A dra",  # in a string
        "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='A',\n"
        "    detailed_descriptions=[\n        'x',\n",  # between list items
        HEAD + "canvas.add_local_description(\n    location='on the ",  # in a name
        HEAD + "canvas.add_local_description(\n    location='on the left',\n    offset='no offset',\n"
        "    area='a small square area',\n    distance_to_viewer=5.",  # in a number
    ],
)
def test_completion_finishes_any_partial_program(tiny, prefix) -> None:
    tokenizer, _, _, factory = tiny
    state = factory.matcher()
    for token in tokenizer.encode(prefix, add_special_tokens=False):
        assert state.accept(token)
    ending = state.completion()
    assert ending is not None and len(ending) < factory.call_tokens + 40
    for token in ending:
        assert state.accept(token)
    assert state.completed
    parse_reply(prefix + tokenizer.decode(ending))


def test_a_small_token_budget_still_ends_in_a_valid_program(tiny) -> None:
    """Default limits let a random model write long programs; near max_new_tokens the loop closes
    the program as it stands instead of letting the budget cut it."""
    tokenizer, model, stop, _ = tiny
    factory = GrammarFactory(tokenizer, stop_token_ids=[stop])
    prompt = chat_ids(tokenizer, [{"role": "user", "content": "a dragon"}])
    for seed, budget in ((1, 128), (4, 400), (5, 700)):
        config = DecodeConfig(seed=seed, max_new_tokens=budget, stop_ids=(stop,))
        result = decode(CausalLMStepper(model), prompt, config, grammar=factory.matcher())
        assert result.stop_reason == "stop" and len(result.token_ids) <= budget
        parse_reply(tokenizer.decode(result.token_ids, skip_special_tokens=True))


_COLOUR_HEAD = (
    "```python\ncanvas = Canvas()\n\ncanvas.set_global_description(\n    description='A',\n"
    "    detailed_descriptions=[],\n    tags='t',\n    HTML_web_color_name='"
)
_CLOSE_A_COLOUR = f"""
from omost_engine.llm.decoding.grammar import GrammarFactory
from omost_engine.testing.tiny_llm import build_tokenizer

tokenizer = build_tokenizer()
factory = GrammarFactory(tokenizer, stop_token_ids=[tokenizer.convert_tokens_to_ids("<|eot_id|>")])
state = factory.matcher()
for token in tokenizer.encode({_COLOUR_HEAD!r}, add_special_tokens=False):
    assert state.accept(token)
print(tokenizer.decode(state.completion()).splitlines()[0])
"""


def test_completion_names_the_same_colour_whatever_the_hash_seed(tiny) -> None:
    """The closing picks the shortest name that fits, ties in the tables' order ('red' before 'tan'):
    the same program under every PYTHONHASHSEED (the endings were once kept in a set)."""
    import os
    import subprocess
    import sys

    tokenizer, _, _, factory = tiny
    state = factory.matcher()
    for token in tokenizer.encode(_COLOUR_HEAD, add_special_tokens=False):
        assert state.accept(token)
    assert tokenizer.decode(state.completion()).startswith("red',\n)")
    # On the set-based code, PYTHONHASHSEED=2 closed with 'tan'.
    env = {**os.environ, "PYTHONHASHSEED": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", _CLOSE_A_COLOUR],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.stdout.strip() == "red',", (done.stdout, done.stderr[-2000:])


def test_masking_falls_back_to_a_backend_that_works_here() -> None:
    """xgrammar's Triton kernel (its CUDA default) fails where Triton or CUDA is missing; the mask is
    then applied by its torch_native backend, with the same result as the CPU one."""
    import xgrammar as xgr

    from omost_engine.llm.decoding.grammar import apply_bitmask

    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(0))
    bitmask = torch.randint(
        -(2**31), 2**31 - 1, (1, 32), dtype=torch.int32, generator=torch.Generator().manual_seed(1)
    )
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask, vocab_size=1000, backend="cpu")
    masked = logits.clone()
    assert apply_bitmask(masked, bitmask, 1000, ("triton", "torch_native")) == "torch_native"
    assert torch.equal(masked, expected)
    assert torch.isinf(masked).any() and not torch.isinf(masked).all()


def test_a_leading_space_is_admitted_only_where_the_tokenizer_adds_one() -> None:
    names = CanvasNames.from_tables()
    assert canvas_grammar_ebnf(names, leading_space=True).startswith('root ::= " "? "```python')
    assert canvas_grammar_ebnf(names).startswith('root ::= "```python')
