"""A model that reproduces a given reply: every position puts all its probability on the reply's next
token. With it, forward passes per token measure the decoding scheme alone (drafts, forced runs), not
a model's quality. Used by the tests and ``bench/bench_decoding.py``.

The oracle reads text, not token positions: after forced runs or drafts the reply so far may be split
into tokens differently from the canonical tokenisation, and the oracle still continues it (with the
canonical token when the split lines up, else the longest vocabulary token that fits).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Logit of the reply's next token; all others get 0, so it keeps ~all the mass even at temperature 2
# (e^-50 per other token), while masked copies of a row stay finite.
_PEAK = 100.0


def token_bytes(tokenizer: Any, vocab_size: int | None = None) -> list[bytes]:
    """The bytes each token id stands for (empty for special tokens), via xgrammar's decoder."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size or len(tokenizer))
    special = set(info.special_token_ids)
    return [b"" if i in special else bytes(piece) for i, piece in enumerate(info.decoded_vocab)]


class TranscriptOracle:
    """A ``Stepper`` (see ``loop.py``) whose next token is always the reply's next token.

    ``prompt_length`` tokens of context come first; the text generated after them is compared with
    ``reply``. Once the reply is complete it predicts ``stop_id``. Off the reply it predicts
    ``stop_id`` too (the bench would show that as a short output).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt_length: int,
        reply: str,
        stop_id: int,
        vocab_size: int | None = None,
        pieces: Sequence[bytes] | None = None,
    ) -> None:
        self.vocab_size = vocab_size or len(tokenizer)
        self.prompt_length = prompt_length
        self.stop_id = stop_id
        self.reply = reply.encode()
        self._pieces = list(pieces) if pieces is not None else token_bytes(tokenizer, self.vocab_size)
        self._by_bytes = {piece: i for i, piece in enumerate(self._pieces) if piece}
        self._longest = max(len(p) for p in self._by_bytes)
        canonical = tokenizer.encode(reply, add_special_tokens=False)
        self._canonical: dict[int, int] = {}  # byte offset -> the canonical token starting there
        offset = 0
        for token in canonical:
            self._canonical.setdefault(offset, token)
            offset += len(self._pieces[token])
        self._tokens: list[int] = []
        self._generated: list[bytes] = []  # reply bytes after each generated token
        self.forward_passes = 0

    @property
    def length(self) -> int:
        return len(self._tokens)

    def _next(self, produced: bytes) -> int:
        if produced == self.reply or not self.reply.startswith(produced):
            return self.stop_id
        if len(produced) in self._canonical:
            return self._canonical[len(produced)]
        rest = self.reply[len(produced) :]
        for size in range(min(self._longest, len(rest)), 0, -1):
            token = self._by_bytes.get(rest[:size])
            if token is not None:
                return token
        return self.stop_id

    def feed(self, token_ids: Sequence[int], *, keep: int) -> torch.Tensor:
        self.forward_passes += 1
        start = len(self._tokens)
        self._tokens.extend(int(t) for t in token_ids)
        for position in range(max(start, self.prompt_length), len(self._tokens)):
            before = self._generated[-1] if self._generated else b""
            self._generated.append(before + self._pieces[self._tokens[position]])
        logits = torch.zeros(keep, self.vocab_size)
        for row, position in enumerate(range(len(self._tokens) - keep, len(self._tokens))):
            produced = (
                self._generated[position - self.prompt_length] if position >= self.prompt_length else b""
            )
            logits[row, self._next(produced)] = _PEAK
        return logits

    def truncate(self, length: int) -> None:
        del self._tokens[length:]
        del self._generated[max(0, length - self.prompt_length) :]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``, with Llama-3's special tokens and chat template, so token
    counts of canvas programs come out close to a real model's (whole common words, split rare ones)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from omost_engine.testing.tiny_llm import LLAMA3_TEMPLATE, SPECIAL_TOKENS

    specials = SPECIAL_TOKENS["llama-3"]
    extra = list(specials["extra"])
    names = list(dict.fromkeys([str(specials["bos"]), str(specials["eos"]), str(specials["pad"]), *extra]))
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=names,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        pad_token=specials["pad"],
        additional_special_tokens=extra,
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer
