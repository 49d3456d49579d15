"""A local transformers model as a Backend: chat template, streamed text, cancel, prompt-state reuse.

The decode step is one method, ``_generate(input_ids, params, on_token, cancel)``; it runs the decode
loop of ``omost_engine.llm.decoding`` (prompt lookup and the canvas grammar, per ``LLMParams``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import LogitsProcessor

from omost_engine.errors import OmostError
from omost_engine.llm.backend import Backend, Generation, Message, OnText, StopReason
from omost_engine.llm.decoding import CausalLMStepper, DecodeConfig, GrammarFactory, decode
from omost_engine.llm.decoding.loop import processors_hook
from omost_engine.llm.decoding.sequences import common_prefix_length
from omost_engine.llm.models import MANAGER_NAME
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from omost_engine.llm.models import LoadedLLM
    from omost_engine.memory import ModelManager

# Tokens that end an assistant turn in the chat formats these models use (Llama-3, Phi-3, ChatML
# for dolphin); added to the model's own eos list so a turn never runs on into the next header.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|end|>", "<|im_end|>", "<|endoftext|>", "<|end_of_text|>")
# Below this many shared leading tokens, reusing the previous turn's state is not worth a crop.
MIN_REUSED_PREFIX = 16

OnToken = Callable[[int], None]


@dataclass(frozen=True)
class DecodeResult:
    """What a decode loop hands back: the new token ids and how it got them."""

    new_tokens: list[int]
    forward_passes: int
    cancelled: bool
    cache: Any = None  # the key/value state after the last forward pass, for reuse next turn
    cached_tokens: list[int] | None = None  # the ids whose state ``cache`` holds
    reused_tokens: int = 0  # prompt tokens whose state came from the previous turn


class IncrementalDecoder:
    """Token ids in, text pieces out, in constant work per token.

    Each step decodes only a short window twice: from the start of the previous piece to the end
    of it, and to the new token; the difference is the new text. Starting both decodes at the same
    token keeps tokenizers that drop a leading space at the start of a decode right, and a window
    ending in an incomplete UTF-8 character waits for the next token.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._decode = _fast_decode(tokenizer)
        self._ids: list[int] = []
        self._prefix = 0  # window start: the first token of the previous piece
        self._read = 0  # tokens already turned into text

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(before) :]


def _fast_decode(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[int]], str]:
    """The Rust tokenizer's decode when it gives the same text (no clean-up pass), else the Python one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    # transformers types decode for a batch too (-> list[str]); one list of ids gives one str
    return lambda ids: cast(str, tokenizer.decode(ids, skip_special_tokens=True))


class TransformersBackend(Backend):
    """Generates with the decode loop of ``omost_engine.llm.decoding`` in the calling thread,
    streaming through a callback.

    Only one generation runs at a time per backend (the model and torch's RNG are shared). The
    key/value state of the previous turn is kept and its shared prefix reused, so a second turn
    only pays for the new tokens; it is dropped whenever the model leaves the accelerator.
    """

    def __init__(
        self,
        llm: LoadedLLM,
        *,
        manager: ModelManager | None = None,
        context_tokens: int = 8192,
        reuse_prompt_state: bool = True,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> None:
        self.llm = llm
        # Extra logits processors for every generation (a constraint, or a benchmark's forced reply).
        self.logits_processors = list(logits_processors)
        self.name = llm.name
        self.manager = manager
        # Never more than the model's own position limit (a 4k model stays within 4k).
        positions = getattr(llm.model.config, "max_position_embeddings", None) or context_tokens
        self.context_tokens = min(context_tokens, int(positions))
        self.reuse_prompt_state = reuse_prompt_state
        self._lock = threading.Lock()
        self._state: tuple[list[int], Any] | None = None
        self.eos_token_ids = self._eos_ids()
        self._grammar_factory: GrammarFactory | None = None  # compiled on the first constrained turn
        if manager is not None:
            manager.register(MANAGER_NAME, self._move, on_device=self._on(manager.device))

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.llm.tokenizer

    def _on(self, device: torch.device) -> bool:
        return self.llm.device.type == device.type

    def _move(self, device: torch.device) -> None:
        self._state = None  # the cached state lives on the old device and would pin its memory
        self.llm.move(device)

    def _eos_ids(self) -> list[int]:
        configured = self.llm.model.generation_config.eos_token_id
        ids = [configured] if isinstance(configured, int) else list(configured or [])
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab]
        return list(dict.fromkeys(ids))

    def prepare(self) -> None:
        if self.manager is not None:
            self.manager.load(MANAGER_NAME)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise OmostError(
                f"the model {self.name} has no chat template, so it cannot hold a conversation",
                parameter="llm",
                value=self.name,
                allowed="a chat (instruct) model such as the Omost ones",
            )
        # transformers wants plain dicts (a TypedDict is not one to a type checker) and types the result
        # as every shape of every flag; tokenized, one conversation gives its ids or a BatchEncoding of them.
        conversation = cast("list[dict[str, str]]", list(messages))
        encoded: Any = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return [int(t) for t in ids]

    def count_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.encode(messages))

    def generate(
        self,
        messages: Sequence[Message],
        params: LLMParams,
        *,
        on_text: OnText | None = None,
        cancel: CancelToken | None = None,
    ) -> Generation:
        params = params.validated()
        cancel = cancel or CancelToken()
        input_ids = self.encode(messages)
        decoder = IncrementalDecoder(self.tokenizer)
        pieces: list[str] = []
        count = 0

        def on_token(token_id: int) -> None:
            nonlocal count
            count += 1
            if token_id in self.eos_token_ids:
                return
            piece = decoder.push(token_id)
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece, count)

        with self._lock:
            self.prepare()
            result = self._generate(input_ids, params, on_token, cancel)
            if self.reuse_prompt_state and result.cache is not None and result.cached_tokens is not None:
                self._state = (result.cached_tokens, result.cache)
        ended = bool(result.new_tokens) and result.new_tokens[-1] in self.eos_token_ids
        stop: StopReason = "cancelled" if result.cancelled else "end" if ended else "length"
        return Generation(
            text="".join(pieces),
            tokens=len(result.new_tokens),
            stop_reason=stop,
            forward_passes=result.forward_passes,
            prompt_tokens=len(input_ids),
            cached_prompt_tokens=result.reused_tokens,
        )

    def _reusable_state(self, input_ids: list[int]) -> tuple[Any, int]:
        """The previous turn's key/value state cropped to the prefix it shares with ``input_ids``."""
        if not self.reuse_prompt_state or self._state is None:
            return None, 0
        cached_ids, cache = self._state
        self._state = None  # the cache is modified in place by the next generation
        shared = min(common_prefix_length(cached_ids, input_ids), len(input_ids) - 1)
        if shared < MIN_REUSED_PREFIX:
            return None, 0
        surplus = cache.get_seq_length() - shared
        if surplus > 0:
            cache.crop(-surplus)
        return cache, shared

    def _grammar(self) -> GrammarFactory:
        """The canvas grammar compiled for this tokenizer, once per backend (a fraction of a second
        for a small vocabulary, longer for Llama-3's 128k tokens)."""
        if self._grammar_factory is None:
            vocab = max(len(self.tokenizer), int(getattr(self.llm.model.config, "vocab_size", 0) or 0))
            self._grammar_factory = GrammarFactory(
                self.tokenizer, vocab_size=vocab, stop_token_ids=self.eos_token_ids
            )
        return self._grammar_factory

    def _generate(
        self, input_ids: list[int], params: LLMParams, on_token: OnToken, cancel: CancelToken
    ) -> DecodeResult:
        """The decode loop: prompt-lookup drafts (``params.prompt_lookup``, ``prompt_lookup_tokens``) and
        the canvas grammar with forced runs (``params.grammar``), sampling as the original app's
        (temperature 0 = greedy, top_p, seed); ``logits_processors`` run on every checked position.
        See docs/decoding.md.

        Calls ``on_token`` once per new id, in order, from this thread, and stops at the next token
        once ``cancel`` is set.
        """
        cache, reused = self._reusable_state(input_ids)
        stepper = CausalLMStepper(self.llm.model, cache=cache)
        config = DecodeConfig.from_params(params, stop_ids=self.eos_token_ids)
        grammar = self._grammar().matcher() if params.grammar else None
        result = decode(
            stepper,
            input_ids,
            config,
            grammar=grammar,
            on_token=on_token,
            cancel=cancel,
            logits_hook=processors_hook(self.logits_processors),
        )
        sequence = input_ids + result.token_ids
        return DecodeResult(
            new_tokens=result.token_ids,
            forward_passes=result.stats.forward_passes,
            cancelled=result.stop_reason == "cancelled",
            cache=stepper.cache,
            cached_tokens=sequence[: stepper.length],
            reused_tokens=reused,
        )
