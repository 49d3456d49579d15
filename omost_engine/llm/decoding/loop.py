"""A decode loop with prompt-lookup drafts, grammar masking and forced-token runs, all in one.

Each iteration feeds the model, in ONE forward pass: the last sampled token, the run of tokens the
grammar fully determines after it (forced, appended without sampling), and a draft copied from the
conversation. The logits of that pass then check the draft position by position:

* greedy (temperature 0): a draft token is kept while it equals the argmax, so the output is exactly
  the output without drafting;
* sampling: at each position a token is sampled from the target distribution (temperature, then
  top-p) and the draft token is kept when they are equal. That is the speculative-sampling rule for a
  draft that is one fixed token (accept with probability p(d), else sample from p without d), so the
  output distribution is exactly the one without drafting. The filters belong to the target
  distribution only; nothing is filtered or masked on the draft side.

With a grammar every row is masked on a copy (the raw logits are never written), the matcher is
rolled back to the accepted prefix after each check, and where plain decoding would append a forced
run the draft is compared with that run instead of being sampled, so drafting changes no token. The
end of the token budget is kept for closing the program (``GrammarState.completion``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from omost_engine.llm.decoding.grammar import GrammarState
from omost_engine.llm.decoding.prompt_lookup import PromptLookup
from omost_engine.llm.decoding.sampling import Sampler
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

StopReason = Literal["stop", "length", "grammar", "cancelled"]
TokenCallback = Callable[[int], None]
# (every id before the position, that position's raw logits) -> logits; e.g. transformers processors.
LogitsHook = Callable[[list[int], torch.Tensor], torch.Tensor]


class Stepper(Protocol):
    """A causal LM with a rewindable cache: what the loop needs from a model."""

    @property
    def length(self) -> int:
        """Tokens in the cache."""
        ...

    def feed(self, token_ids: Sequence[int], *, keep: int) -> torch.Tensor:
        """Append ``token_ids`` to the cache; return the next-token logits of the last ``keep``
        positions, shape (keep, vocab)."""
        ...

    def truncate(self, length: int) -> None:
        """Forget every cached token from position ``length`` on."""
        ...


class CausalLMStepper:
    """A transformers causal LM with a DynamicCache."""

    def __init__(self, model: Any, *, cache: Any = None) -> None:
        """``cache`` may hold the state of a prefix already (e.g. the previous turn's shared prompt)."""
        from transformers import DynamicCache

        self.model = model
        # With the config the cache gets the model's layer kinds (sliding-window layers, for one).
        self.cache = cache if cache is not None else DynamicCache(config=model.config)
        # transformers 5.2x renamed past_key_values to cache; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._length = self.cache.get_seq_length() if cache is not None else 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def feed(self, token_ids: Sequence[int], *, keep: int) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=keep,
                             **{self._cache_arg: self.cache})
        self._length += len(token_ids)
        return out.logits[0, -keep:]

    def truncate(self, length: int) -> None:
        remove = self._length - length
        if remove > 0:
            self.cache.crop(-remove)  # a negative count removes that many tokens from the end
            self._length = length


def processors_hook(processors: Sequence[Any]) -> LogitsHook | None:
    """A LogitsHook running transformers ``LogitsProcessor``s on one row (None when there are none)."""
    if not processors:
        return None

    def hook(ids: list[int], row: torch.Tensor) -> torch.Tensor:
        scores = row.detach().clone().unsqueeze(0)
        input_ids = torch.tensor([ids], dtype=torch.long, device=row.device)
        for processor in processors:
            scores = processor(input_ids, scores)
        return scores[0]

    return hook


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    max_new_tokens: int = 4096
    temperature: float = 0.6
    top_p: float = 0.9
    seed: int = 12345
    prompt_lookup: bool = True
    draft_tokens: int = 20
    forced_runs: bool = True  # append grammar-determined stretches without sampling
    stop_ids: tuple[int, ...] = ()

    @classmethod
    def from_params(cls, params: LLMParams, *, stop_ids: Sequence[int]) -> DecodeConfig:
        return cls(max_new_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                   seed=params.seed, prompt_lookup=params.prompt_lookup,
                   draft_tokens=params.prompt_lookup_tokens, stop_ids=tuple(stop_ids))


@dataclass(kw_only=True)
class DecodeStats:
    forward_passes: int = 0
    tokens: int = 0  # new tokens, the stop token included
    sampled: int = 0  # tokens chosen by sampling (draft rejections and bonus tokens)
    drafted: int = 0  # draft tokens fed to the model
    accepted: int = 0  # draft tokens kept
    forced: int = 0  # tokens the grammar determined
    seconds: float = 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.forward_passes if self.forward_passes else 0.0


@dataclass(frozen=True, kw_only=True)
class LoopResult:
    token_ids: list[int]  # the new tokens; the last is the stop token when stop_reason is "stop"
    stop_reason: StopReason
    stats: DecodeStats = field(default_factory=DecodeStats)


def decode(
    stepper: Stepper,
    prompt_ids: Sequence[int],
    config: DecodeConfig,
    *,
    grammar: GrammarState | None = None,
    on_token: TokenCallback | None = None,
    cancel: CancelToken | None = None,
    logits_hook: LogitsHook | None = None,
) -> LoopResult:
    """Generate after ``prompt_ids`` (the whole templated conversation) until a stop token, the grammar's
    end, ``max_new_tokens`` or ``cancel``, like ``model.generate``: ``on_token`` gets each new id in
    order (the stop token too). A cancel takes effect at the next token, even inside a run decided by
    one pass: the result then ends at the token during whose callback it was set (stop_reason
    "cancelled"). The stepper may already hold a prefix of ``prompt_ids``; at the end it holds a
    prefix of prompt + new tokens (``[:stepper.length]``), ready for reuse.

    With a grammar, the last ``call_tokens + 16`` tokens of the budget are kept for closing the
    program (see ``GrammarState.completion``); no pass crosses into them, so where the program gets
    closed does not depend on how passes fell. ``logits_hook`` rewrites each row before masking and
    sampling (extra logits processors); it must see every position, so forced runs are off while it
    is set."""
    started = time.perf_counter()
    # The matcher's own stop tokens end the reply too (it allows them once the program is complete).
    stops = frozenset(config.stop_ids) | frozenset(grammar.stop_ids if grammar is not None else ())
    sampler = Sampler(temperature=config.temperature, top_p=config.top_p, seed=config.seed)
    lookup = (PromptLookup(prompt_ids, stop_ids=config.stop_ids)
              if config.prompt_lookup and config.draft_tokens > 0 else None)
    forcing = grammar is not None and config.forced_runs and logits_hook is None
    reserve = grammar.factory.call_tokens + 16 if grammar is not None else 0
    stats = DecodeStats()
    generated: list[int] = []
    pending: list[int] = list(prompt_ids[stepper.length:])  # fed at the next pass, before the draft

    def commit(tokens: list[int]) -> bool:
        """Hand ``tokens`` out one by one; False (and the rest dropped) once cancelled."""
        for count, token in enumerate(tokens):
            if cancel is not None and cancel.cancelled:
                tokens = tokens[:count]
                break
            generated.append(token)
            if on_token is not None:
                on_token(token)
        if lookup is not None:
            lookup.extend(tokens)
        return not (cancel is not None and cancel.cancelled)

    reason: StopReason = "length"
    while True:
        if cancel is not None and cancel.cancelled:
            reason = "cancelled"
            break
        budget = config.max_new_tokens - len(generated)
        if budget <= 0:
            break
        limit = budget  # tokens this iteration may add
        if grammar is not None:
            if grammar.terminated:
                reason = "stop"
                break
            limit = budget - reserve
            if limit <= 0:
                closing = grammar.completion()
                if closing is not None:
                    reason = _close(grammar, closing[:budget], budget, commit, config, stats, stops)
                    break
                limit = 1  # in the middle of a character: one more token, then close
            forced = _accept_prefix(grammar, grammar.forced_tokens()[:limit], stops) if forcing else []
            stats.forced += len(forced)
            pending.extend(forced)
            if not commit(forced):
                reason = "cancelled"
                break
            limit -= len(forced)
            if limit <= 0:
                continue
            only_stop = _only_stop_allowed(grammar, stops)
            if len(only_stop) == 1:
                # The program is complete and only the end token may follow: no pass needed for it.
                reason = "stop" if commit(list(only_stop)) else "cancelled"
                break
        draft = lookup.draft(min(config.draft_tokens, limit)) if lookup is not None else []
        if grammar is not None and draft:
            draft = _accept_prefix(grammar, draft, stops)
            grammar.rollback(len(draft))
        base = stepper.length
        logits = stepper.feed(pending + draft, keep=len(draft) + 1)
        stats.forward_passes += 1
        stats.drafted += len(draft)

        # Check the draft position by position, as plain decoding would have gone: a forced run
        # where plain decoding would have appended one, else a sampled token.
        accepted: list[int] = []  # draft tokens kept (all fed already)
        tail: list[int] = []  # forced tokens past the end of the kept draft (not fed yet)
        new_token: int | None = None
        context = list(prompt_ids) + generated if logits_hook is not None else []
        index, after_forced = 0, True  # the run before the pass was this position's forced run
        while True:
            if forcing and not after_forced and grammar is not None:
                run = _accept_prefix(grammar, grammar.forced_tokens()[: limit - len(accepted)], stops)
                if run:
                    same = _common_prefix(run, draft[index:])
                    accepted += run[:same]
                    stats.forced += len(run)
                    index += same
                    if same < len(run):
                        tail = run[same:]
                        break
                    after_forced = True
                    continue
            after_forced = False
            if len(accepted) + len(tail) >= limit:
                break
            row = logits[index] if logits_hook is None else logits_hook(context + draft[:index], logits[index])
            row = row if grammar is None else grammar.mask_logits(row)
            choice = sampler.pick(row)
            if index == len(draft) or choice != draft[index]:
                new_token = choice
                stats.sampled += 1
                break
            accepted.append(choice)
            index += 1
            if grammar is not None:
                grammar.accept(choice)
            if choice in stops:
                break
        stats.accepted += index
        stepper.truncate(base + len(pending) + index)
        if new_token is not None and grammar is not None and not grammar.accept(new_token):
            # Only when the grammar allowed nothing at all (every logit masked): end cleanly.
            new_token, reason = None, "grammar"
        step = accepted + tail + ([new_token] if new_token is not None else [])
        if not commit(step):
            reason = "cancelled"
            break
        if step and step[-1] in stops:
            reason = "stop"
            break
        if reason == "grammar":
            break
        pending = tail + ([new_token] if new_token is not None else [])
        if not pending:  # the pass ended on a kept draft token: step back one to get its logits again
            stepper.truncate(stepper.length - 1)
            pending = [generated[-1]]

    # A cancel inside a run leaves tokens in the cache that the reply does not have.
    stepper.truncate(min(stepper.length, len(prompt_ids) + len(generated)))
    stats.tokens = len(generated)
    stats.seconds = time.perf_counter() - started
    return LoopResult(token_ids=generated, stop_reason=reason, stats=stats)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _close(grammar: GrammarState, ending: list[int], budget: int, commit: Callable[[list[int]], bool],
           config: DecodeConfig, stats: DecodeStats, stops: frozenset[int]) -> StopReason:
    """Append the program's ending and the end token without sampling."""
    ending = _accept_prefix(grammar, ending, stops)
    stats.forced += len(ending)
    if not commit(ending):
        return "cancelled"
    allowed = _only_stop_allowed(grammar, stops)
    end = [t for t in (*config.stop_ids, *sorted(allowed)) if t in allowed][:1]
    if not end or len(ending) >= budget:
        return "length"
    return "stop" if commit(end) else "cancelled"


def _accept_prefix(grammar: GrammarState, tokens: Sequence[int], stops: frozenset[int]) -> list[int]:
    """Feed ``tokens`` to the matcher until one is refused; return the accepted prefix (kept accepted).
    Stops after a stop token, since nothing follows it."""
    kept: list[int] = []
    for token in tokens:
        if not grammar.accept(token):
            break
        kept.append(int(token))
        if token in stops:
            break
    return kept


def _only_stop_allowed(grammar: GrammarState, stops: frozenset[int]) -> set[int]:
    """The allowed tokens when the program is complete and only stop tokens may follow, else empty."""
    if not grammar.matcher.is_completed():
        return set()
    allowed = grammar.allowed_tokens()
    return allowed if allowed <= stops else set()
