from pathlib import Path

import pytest

from omost_engine.engine import ChatMessage
from omost_engine.errors import OmostError
from omost_engine.llm.conversation import (
    build_messages,
    check_prompt,
    fit_context,
    history_pairs,
    load_conversation,
    save_conversation,
)
from omost_engine.llm.system_prompt import SYSTEM_PROMPT


def turns(n: int, size: int = 10) -> list[ChatMessage]:
    history = []
    for i in range(n):
        history.append(ChatMessage("user", f"prompt {i} " + "word " * size))
        history.append(ChatMessage("assistant", f"program {i} " + "code " * size))
    return history


def words(messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_messages_are_system_then_pairs_then_prompt() -> None:
    messages = build_messages([("a cat", "program")], "make it a dog")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[-1]["content"] == "make it a dog"


def test_history_keeps_only_pairs_with_text_on_both_sides() -> None:
    history = [
        ChatMessage("user", "a cat"),
        ChatMessage("assistant", "program 1"),
        ChatMessage("user", "unanswered"),
        ChatMessage("user", "a dog"),
        ChatMessage("assistant", ""),  # empty reply: dropped
        ChatMessage("assistant", "orphan reply"),
        ChatMessage("user", "a fox"),
        ChatMessage("assistant", "program 2"),
    ]
    assert history_pairs(history) == [("a cat", "program 1"), ("a fox", "program 2")]


def test_fitting_drops_oldest_turns_but_never_the_latest() -> None:
    history = turns(6)
    full = words(build_messages(history_pairs(history), "edit"))
    fitted = fit_context(history, "edit", count_tokens=words, context_tokens=full - 30, reply_tokens=10)
    assert fitted.trimmed_turns == 2  # each turn is 24 words
    assert fitted.messages[0]["content"] == SYSTEM_PROMPT
    assert fitted.messages[1]["content"].startswith("prompt 2")
    assert fitted.messages[-2]["content"].startswith("program 5")
    assert "2 oldest turns" in fitted.note
    assert fitted.prompt_tokens == words(fitted.messages) <= full - 40


def test_fitting_changes_nothing_when_it_fits() -> None:
    fitted = fit_context(turns(3), "edit", count_tokens=words, context_tokens=10_000, reply_tokens=2048)
    assert fitted.trimmed_turns == 0 and fitted.note is None and len(fitted.messages) == 8


def test_latest_turn_is_kept_even_when_the_reply_gets_less_room() -> None:
    history = turns(3, size=100)
    minimum = words(build_messages(history_pairs(history)[-1:], "edit"))
    fitted = fit_context(history, "edit", count_tokens=words, context_tokens=minimum + 5, reply_tokens=500)
    assert fitted.trimmed_turns == 2
    assert fitted.messages[-2]["content"].startswith("program 2")


def test_a_conversation_that_cannot_fit_is_a_clear_error() -> None:
    with pytest.raises(OmostError, match="start a new conversation") as info:
        fit_context(turns(1, size=500), "edit", count_tokens=words, context_tokens=100, reply_tokens=10)
    assert info.value.parameter == "prompt"


@pytest.mark.parametrize("prompt", ["", "   ", None, 5, "x" * 5000])
def test_bad_prompts_are_refused(prompt) -> None:
    with pytest.raises(OmostError):
        check_prompt(prompt)


def test_conversation_file_round_trip(tmp_path: Path) -> None:
    history = turns(2)
    save_conversation(tmp_path / "conversation.json", history, model="m")
    assert load_conversation(tmp_path / "conversation.json") == (history, "m")


@pytest.mark.parametrize(
    "content", ["not json", '{"messages": 3}', '{"messages": [{"role": "system", "content": "x"}]}']
)
def test_bad_conversation_files_are_clear_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "conversation.json"
    path.write_text(content)
    with pytest.raises(OmostError, match="conversation"):
        load_conversation(path)
    with pytest.raises(OmostError, match="does not exist"):
        load_conversation(tmp_path / "missing.json")
