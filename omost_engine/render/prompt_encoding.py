"""Greedy sub-prompt bags in 77-token CLIP chunks (the original's ``encode_bag_of_subprompts_greedy``).

Every chunk of a condition starts with all its prefixes (global description, then the region's own
description) and is filled with whole suffixes (detailed descriptions, tags, ...) packed greedily in
order. The chunks are encoded by CLIP-L and CLIP-G, their penultimate hidden states concatenated on
the feature axis, and the chunks joined on the token axis.

Two deliberate departures from the original, both documented in ``docs/render.md``:

* Prefix overflow. The original cuts every chunk at 75 ids, so prefixes of 75 tokens or more push
  every suffix out and all chunks become the same prefix-only text. Here (``keep_suffixes=True``) the
  prefixes are shortened when they would leave less room than the longest suffix needs (capped at
  ``SUFFIX_ROOM_CAP`` tokens): the last prefix (the region's own description) is kept first and the
  earlier ones (the global description) lose their tails. A suffix still longer than the room left
  (even one longer than 75 tokens, which the original cuts first) is split over consecutive chunks
  instead of being cut, so no suffix token is ever dropped. For prompts
  where the original loses nothing, the chunks are identical to the original's.
* Pooled vector. SDXL was trained with CLIP-G's *projected* pooled output as ``text_embeds``; the
  original feeds the unprojected one. ``pooled="projected"`` (default) follows SDXL,
  ``pooled="unprojected"`` reproduces the original.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from omost_engine.errors import OmostError

CHUNK_TOKENS = 77
CONTENT_TOKENS = CHUNK_TOKENS - 2  # between bos and eos
SUFFIX_ROOM_CAP = 37  # prefixes never take more than 75 - min(longest suffix, this) tokens

Tokenize = Callable[[str], list[int]]
PooledKind = Literal["projected", "unprojected"]
Chunk = tuple[list[int], list[int]]  # 77 ids for CLIP-L, 77 ids for CLIP-G


@dataclass(frozen=True, kw_only=True)
class SpecialTokens:
    bos: int
    eos: int
    pad_l: int  # CLIP-L pads with its eos
    pad_g: int  # SDXL's CLIP-G pads with "!" (id 0)


def _layout(ids: Sequence[int], special: SpecialTokens, pad: int) -> list[int]:
    return ([special.bos, *ids[:CONTENT_TOKENS], special.eos] + [pad] * CHUNK_TOKENS)[:CHUNK_TOKENS]


def plain_chunk(ids_l: Sequence[int], ids_g: Sequence[int], special: SpecialTokens) -> Chunk:
    """One ordinary 77-token prompt (the negative prompt): bos, up to 75 ids, eos, padding."""
    return _layout(ids_l, special, special.pad_l), _layout(ids_g, special, special.pad_g)


def _trim_prefixes(pieces: list[Chunk], limit: int) -> list[Chunk]:
    """Keep at most ``limit`` prefix tokens: later prefixes first, each cut at its tail."""
    kept: list[Chunk] = []
    left = limit
    for ids_l, ids_g in reversed(pieces):
        take = max(0, min(len(ids_l), left))
        kept.append((ids_l[:take], ids_g[:take]))
        left -= take
    return list(reversed(kept))


def _pack(items: list[Chunk], budget: int) -> list[list[Chunk]]:
    """Suffixes in order, greedily into bags of at most ``budget`` tokens (one empty bag if none)."""
    bags: list[list[Chunk]] = []
    current: list[Chunk] = []
    total = 0
    for item in items:
        if total + len(item[0]) > budget:
            if current:
                bags.append(current)
            current, total = [item], len(item[0])
        else:
            current.append(item)
            total += len(item[0])
    if current:
        bags.append(current)
    return bags or [[]]


def greedy_chunks(
    prefixes: Sequence[str],
    suffixes: Sequence[str],
    *,
    tokenize_l: Tokenize,
    tokenize_g: Tokenize,
    special: SpecialTokens,
    keep_suffixes: bool = True,
) -> list[Chunk]:
    """The 77-token id chunks of one condition. ``keep_suffixes=False`` is the original, overflow included."""

    def tokenize(text: str) -> Chunk:
        ids_l, ids_g = list(tokenize_l(text)), list(tokenize_g(text))
        if len(ids_l) != len(ids_g):
            raise OmostError(
                f"the two CLIP tokenizers of this model split {text[:40]!r} differently "
                f"({len(ids_l)} and {len(ids_g)} tokens); an SDXL model needs two CLIP BPE tokenizers "
                "with the same vocabulary",
                parameter="model",
            )
        return ids_l, ids_g

    prefix_pieces = [tokenize(p) for p in prefixes]
    items = [tokenize(s) for s in suffixes]
    if not keep_suffixes:  # the original cuts every suffix at 75 tokens before bagging
        items = [(ids_l[:CONTENT_TOKENS], ids_g[:CONTENT_TOKENS]) for ids_l, ids_g in items]
    if keep_suffixes:
        longest = max((len(ids_l) for ids_l, _ in items), default=0)
        limit = CONTENT_TOKENS - min(longest, SUFFIX_ROOM_CAP)
        if sum(len(ids_l) for ids_l, _ in prefix_pieces) > limit:
            prefix_pieces = _trim_prefixes(prefix_pieces, limit)
    prefix_l = [i for ids_l, _ in prefix_pieces for i in ids_l]
    prefix_g = [i for _, ids_g in prefix_pieces for i in ids_g]
    budget = CONTENT_TOKENS - len(prefix_l)

    bags = _pack(items, budget)
    if keep_suffixes:  # a lone suffix longer than the room is split over chunks, not cut
        split: list[list[Chunk]] = []
        for bag in bags:
            if len(bag) == 1 and len(bag[0][0]) > budget:
                ids_l, ids_g = bag[0]
                split += [
                    [(ids_l[i : i + budget], ids_g[i : i + budget])] for i in range(0, len(ids_l), budget)
                ]
            else:
                split.append(bag)
        bags = split

    chunks: list[Chunk] = []
    for bag in bags:
        ids_l = prefix_l + [i for piece, _ in bag for i in piece]
        ids_g = prefix_g + [i for _, piece in bag for i in piece]
        chunks.append((_layout(ids_l, special, special.pad_l), _layout(ids_g, special, special.pad_g)))
    return chunks


@dataclass(frozen=True)
class EncodedPrompt:
    cond: torch.Tensor  # (1, 77 * chunks, dim_l + dim_g)
    pooled: torch.Tensor  # (1, pooled_dim), from the first chunk


class PromptEncoder:
    """Tokenizes and encodes conditions with an SDXL model's two CLIP tokenizers and text encoders."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        tokenizer_2: Any,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module,
        pooled: PooledKind = "projected",
        keep_suffixes: bool = True,
    ) -> None:
        if pooled not in ("projected", "unprojected"):
            raise OmostError(
                f"pooled must be projected or unprojected, not {pooled!r}",
                parameter="pooled",
                value=pooled,
                allowed=("projected", "unprojected"),
            )
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.pooled_kind: PooledKind = pooled
        self.keep_suffixes = keep_suffixes
        self.special = SpecialTokens(
            bos=tokenizer.bos_token_id,
            eos=tokenizer.eos_token_id,
            pad_l=tokenizer.pad_token_id,
            pad_g=tokenizer_2.pad_token_id,
        )

    def _ids_l(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)

    def _ids_g(self, text: str) -> list[int]:
        return list(
            self.tokenizer_2(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        )

    def count_tokens(self, text: str) -> int:
        """CLIP tokens of ``text`` without bos/eos: what one 77-token chunk must hold (75 at most); the
        ``count_tokens`` of ``omost_engine.editing.set_text``."""
        return len(self._ids_l(text))

    def chunks(self, prefixes: Sequence[str], suffixes: Sequence[str]) -> list[Chunk]:
        return greedy_chunks(
            prefixes,
            suffixes,
            tokenize_l=self._ids_l,
            tokenize_g=self._ids_g,
            special=self.special,
            keep_suffixes=self.keep_suffixes,
        )

    def negative_chunk(self, text: str) -> Chunk:
        return plain_chunk(self._ids_l(text), self._ids_g(text), self.special)

    @torch.inference_mode()
    def encode(self, groups: Sequence[Sequence[Chunk]]) -> list[EncodedPrompt]:
        """Encode several conditions' chunks in one batch per text encoder."""
        flat = [chunk for group in groups for chunk in group]
        device = next(self.text_encoder.parameters()).device
        ids_l = torch.tensor([c[0] for c in flat], dtype=torch.long, device=device)
        ids_g = torch.tensor(
            [c[1] for c in flat], dtype=torch.long, device=next(self.text_encoder_2.parameters()).device
        )
        out_l = self.text_encoder(ids_l, output_hidden_states=True)
        out_g = self.text_encoder_2(ids_g, output_hidden_states=True)
        hidden = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2].to(device)], dim=-1)
        projected = getattr(out_g, "text_embeds", None)
        if self.pooled_kind == "projected" and projected is not None:
            pooled = projected
        else:  # final-layer-norm state at the first eos: CLIPTextModel's pooler_output
            eos_at = (ids_g == self.special.eos).int().argmax(dim=-1)
            pooled = out_g.last_hidden_state[torch.arange(len(flat), device=ids_g.device), eos_at]
        pooled = pooled.to(device)
        results: list[EncodedPrompt] = []
        start = 0
        for group in groups:
            end = start + len(group)
            cond = hidden[start:end].reshape(1, -1, hidden.shape[-1])
            results.append(EncodedPrompt(cond=cond, pooled=pooled[start : start + 1]))
            start = end
        return results
