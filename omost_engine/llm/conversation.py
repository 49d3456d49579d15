"""Building the chat the model sees, as the original does, and trimming it to the context.

Messages: the system prompt, then each (user, assistant) pair of the history whose two sides are
non-empty text, then the new user message. Whole previous programs go back to the model, so an
edit turn ("change the dragon to a dinosaur") can rewrite the latest one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omost_engine.engine import ChatMessage
from omost_engine.errors import OmostError
from omost_engine.llm.backend import Message
from omost_engine.llm.system_prompt import SYSTEM_PROMPT

MAX_PROMPT_CHARS = 4000


def history_pairs(history: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """The (user, assistant) pairs of a history, keeping only pairs whose both sides are text.

    A user message with no reply yet (or a reply with no user message) is skipped, like the image
    entries the original's render step added to its chat history.
    """
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for message in history:
        if message.role == "user":
            pending = message.content
        elif pending is not None:
            if isinstance(pending, str) and isinstance(message.content, str) and pending and message.content:
                pairs.append((pending, message.content))
            pending = None
    return pairs


def build_messages(
    pairs: Sequence[tuple[str, str]], prompt: str, *, system: str = SYSTEM_PROMPT
) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": system}]
    for user, assistant in pairs:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": prompt})
    return messages


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise OmostError(
            "the prompt is empty: describe the image you want",
            parameter="prompt",
            value=prompt,
            allowed=f"text of 1 to {MAX_PROMPT_CHARS} characters",
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise OmostError(
            f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}",
            parameter="prompt",
            value=len(prompt),
            allowed=f"1 to {MAX_PROMPT_CHARS} characters",
        )
    return prompt


@dataclass(frozen=True)
class FittedChat:
    messages: list[Message]
    trimmed_turns: int
    prompt_tokens: int
    note: str | None


def fit_context(
    history: Sequence[ChatMessage],
    prompt: str,
    *,
    count_tokens: Callable[[list[Message]], int],
    context_tokens: int,
    reply_tokens: int,
) -> FittedChat:
    """Drop the oldest turns until prompt + room for the reply fits ``context_tokens``.

    The system prompt, the latest turn (the program an edit refers to) and the new message are
    never dropped; if even they do not leave room for a reply, the user gets an OmostError.
    """
    pairs = history_pairs(history)
    budget = context_tokens - reply_tokens
    dropped = 0
    messages = build_messages(pairs, prompt)
    tokens = count_tokens(messages)
    while tokens > budget and dropped < len(pairs) - 1:
        dropped += 1
        messages = build_messages(pairs[dropped:], prompt)
        tokens = count_tokens(messages)
    if tokens >= context_tokens:
        raise OmostError(
            f"the conversation needs {tokens} tokens but the model's context holds {context_tokens}; "
            "start a new conversation or shorten the prompt",
            parameter="prompt",
            value=tokens,
            allowed=f"at most {context_tokens} tokens",
        )
    note = None
    if dropped:
        turns = "turn" if dropped == 1 else "turns"
        note = f"dropped the {dropped} oldest {turns} of the conversation to fit the {context_tokens}-token context"
    return FittedChat(messages=messages, trimmed_turns=dropped, prompt_tokens=tokens, note=note)


def save_conversation(path: str | Path, history: Sequence[ChatMessage], *, model: str) -> None:
    """Write a conversation as JSON (the CLI's conversation.json)."""
    data = {
        "format": "omost-bot-conversation",
        "version": 1,
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in history],
    }
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_conversation(path: str | Path) -> tuple[list[ChatMessage], str | None]:
    """Read conversation.json back: the messages and the model that wrote them; OmostError if bad."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in data["messages"]]
    except FileNotFoundError as exc:
        raise OmostError(
            f"no conversation to continue: {path} does not exist",
            parameter="continue",
            value=str(path),
            allowed="a folder written by omost-bot compose",
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise OmostError(
            f"{path} is not a conversation file written by omost-bot compose",
            parameter="continue",
            value=str(path),
            allowed="a conversation.json written by omost-bot compose",
        ) from exc
    for message in messages:
        if message.role not in ("user", "assistant") or not isinstance(message.content, str):
            raise OmostError(
                f"{path} holds a message that is not a user or assistant text",
                parameter="continue",
                value=message.role,
                allowed=("user", "assistant"),
            )
    model = data.get("model")
    return messages, model if isinstance(model, str) else None
