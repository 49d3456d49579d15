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

``decode`` drives three parts, each readable and tested alone: planning (``planning.py``: the forced
run, the draft, or the end without a pass), verification (``verification.py``: the draft against the
pass's logits) and commit/rewind (``commit.py``: tokens handed out one by one, the cache cut back).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from omost_engine.llm.decoding.commit import Output, StopReason, TokenCallback, next_feed, trim_cache
from omost_engine.llm.decoding.grammar import GrammarState
from omost_engine.llm.decoding.planning import Ending, Planner
from omost_engine.llm.decoding.prompt_lookup import PromptLookup
from omost_engine.llm.decoding.sampling import Sampler
from omost_engine.llm.decoding.verification import LogitsHook, Verdict, Verifier
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken


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
        device: torch.device = next(self.model.parameters()).device
        return device

    def feed(self, token_ids: Sequence[int], *, keep: int) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, use_cache=True, logits_to_keep=keep, **{self._cache_arg: self.cache}
            )
        self._length += len(token_ids)
        logits: torch.Tensor = out.logits[0, -keep:]
        return logits

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
        return cls(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            prompt_lookup=params.prompt_lookup,
            draft_tokens=params.prompt_lookup_tokens,
            stop_ids=tuple(stop_ids),
        )


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
    generation = _Generation(
        stepper,
        prompt_ids,
        config,
        grammar=grammar,
        on_token=on_token,
        cancel=cancel,
        logits_hook=logits_hook,
    )
    reason = generation.run()
    output, stats = generation.output, generation.stats
    trim_cache(stepper, len(prompt_ids) + len(output.tokens))
    stats.tokens = len(output.tokens)
    stats.seconds = time.perf_counter() - started
    return LoopResult(token_ids=output.tokens, stop_reason=reason, stats=stats)


class _Generation:
    """One call of ``decode``: plan a pass (planning.py), run it, verify the draft (verification.py),
    commit and rewind (commit.py), until an ending."""

    def __init__(
        self,
        stepper: Stepper,
        prompt_ids: Sequence[int],
        config: DecodeConfig,
        *,
        grammar: GrammarState | None,
        on_token: TokenCallback | None,
        cancel: CancelToken | None,
        logits_hook: LogitsHook | None,
    ) -> None:
        # The matcher's own stop tokens end the reply too (it allows them once the program is complete).
        self.stops = frozenset(config.stop_ids) | frozenset(grammar.stop_ids if grammar is not None else ())
        lookup = (
            PromptLookup(prompt_ids, stop_ids=config.stop_ids)
            if config.prompt_lookup and config.draft_tokens > 0
            else None
        )
        forcing = config.forced_runs and logits_hook is None  # a hook must see every position
        sampler = Sampler(temperature=config.temperature, top_p=config.top_p, seed=config.seed)
        self.planner = Planner(
            grammar=grammar,
            lookup=lookup,
            draft_tokens=config.draft_tokens,
            forcing=forcing,
            stop_ids=config.stop_ids,
            stops=self.stops,
        )
        self.verifier = Verifier(
            pick=sampler.pick, grammar=grammar, forcing=forcing, stops=self.stops, hook=logits_hook
        )
        self.output = Output(on_token=on_token, cancel=cancel, lookup=lookup)
        self.stats = DecodeStats()
        self.stepper = stepper
        self.prompt_ids = prompt_ids
        self.max_new_tokens = config.max_new_tokens
        self.pending: list[int] = list(prompt_ids[stepper.length :])  # fed at the next pass, before the draft

    def run(self) -> StopReason:
        while not self.output.cancelled:
            before = self.planner.before_pass(self.max_new_tokens - len(self.output.tokens))
            if isinstance(before, Ending):
                return self._end(before)
            self.stats.forced += len(before.tokens)
            self.pending.extend(before.tokens)
            if not self.output.commit(before.tokens):
                return "cancelled"
            if before.limit <= 0:
                continue
            ending = self.planner.end_without_pass()
            if ending is not None:
                return self._end(ending)
            reason = self._pass(before.limit)
            if reason is not None:
                return reason
        return "cancelled"

    def _end(self, ending: Ending) -> StopReason:
        self.stats.forced += len(ending.closing)
        return self.output.finish(ending.tokens, ending.reason)

    def _pass(self, limit: int) -> StopReason | None:
        """One forward pass over the pending tokens and a draft; the reason to stop, if any."""
        draft = self.planner.draft(limit)
        base = self.stepper.length
        logits = self.stepper.feed(self.pending + draft, keep=len(draft) + 1)
        context = [*self.prompt_ids, *self.output.tokens] if self.verifier.hook is not None else []
        verdict = self.verifier.check(logits, draft, limit=limit, context=context)
        self.stats.forward_passes += 1
        self.stats.drafted += len(draft)
        self.stats.accepted += len(verdict.accepted)
        self.stats.forced += verdict.forced
        self.stats.sampled += verdict.sampled
        return self._commit(verdict, kept_length=base + len(self.pending) + len(verdict.accepted))

    def _commit(self, verdict: Verdict, *, kept_length: int) -> StopReason | None:
        self.stepper.truncate(kept_length)
        tokens = verdict.tokens
        if not self.output.commit(tokens):
            return "cancelled"
        if tokens and tokens[-1] in self.stops:
            return "stop"
        if verdict.refused:
            return "grammar"
        self.pending = next_feed(
            self.stepper, kept_length=kept_length, unfed=verdict.unfed, reply=self.output.tokens
        )
        return None
