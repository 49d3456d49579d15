"""The decode loop inside TransformersBackend: the LLMParams switches, a valid program from a random
model end to end (ChatService -> Layout), prompt-state reuse."""

from __future__ import annotations

import pytest

from omost_engine.llm.conversation import build_messages
from omost_engine.llm.service import ChatService
from omost_engine.llm.transformers_backend import TransformersBackend
from omost_engine.params import LLMParams
from omost_engine.reply import parse_reply

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_defaults_give_a_valid_program_from_a_random_model(tiny_backend: TransformersBackend) -> None:
    """The complete CPU pipeline: a random tiny model, the default parameters (grammar and prompt
    lookup on), the chat service's parsing; the reply is always a program."""
    service = ChatService(backend=tiny_backend)
    for seed in (1, 2, 3):
        result = service.chat([], "a dragon fighting warriors", LLMParams(seed=seed, max_new_tokens=600))
        assert result.layout.conditions == parse_reply(result.reply).conditions
        assert result.reply.startswith("```python\n") and result.reply.endswith("\n```")
        assert result.forward_passes < result.tokens  # forced runs skip passes


def test_switches_off_give_one_pass_per_token(tiny_backend: TransformersBackend) -> None:
    params = LLMParams(seed=4, max_new_tokens=128, prompt_lookup=False, grammar=False)
    generation = tiny_backend.generate(build_messages([], "a dragon"), params)
    assert generation.forward_passes == generation.tokens


@pytest.mark.parametrize("grammar", [False, True], ids=["free", "grammar"])
def test_prompt_lookup_keeps_greedy_output_and_saves_passes(
    tiny_backend: TransformersBackend, grammar
) -> None:
    messages = build_messages([], "a dragon fighting warriors")
    runs = {}
    for lookup in (False, True):
        params = LLMParams(
            temperature=0.0,
            max_new_tokens=300,
            prompt_lookup=lookup,
            prompt_lookup_tokens=10,
            grammar=grammar,
        )
        runs[lookup] = tiny_backend.generate(messages, params)
    assert runs[True].text == runs[False].text
    assert runs[True].forward_passes <= runs[False].forward_passes
    if grammar:  # a long program, in which the random model repeats itself: drafts come true
        assert runs[True].forward_passes < runs[False].forward_passes


def test_second_turn_reuses_the_state_and_keeps_the_reply(tiny_backend: TransformersBackend) -> None:
    fresh = TransformersBackend(tiny_backend.llm, reuse_prompt_state=False)
    params = LLMParams(temperature=0.0, max_new_tokens=300)
    first = tiny_backend.generate(build_messages([], "a dragon"), params)
    turn2 = build_messages([("a dragon", first.text)], "change the dragon to a dinosaur")
    second = tiny_backend.generate(turn2, params)
    assert second.cached_prompt_tokens > 0
    assert second.text == fresh.generate(turn2, params).text
    parse_reply(second.text)
