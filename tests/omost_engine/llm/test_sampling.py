"""The top-p sampler without a full sort gives exactly what the full-sort sampler gave."""

from __future__ import annotations

import pytest
import torch

from omost_engine.llm.decoding.sampling import FIRST_TOP_K, Sampler


class FullSortSampler:
    """The previous implementation (torch.sort over the whole vocabulary), kept as the reference."""

    def __init__(self, *, temperature: float, top_p: float, seed: int) -> None:
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator().manual_seed(seed)

    def _nucleus(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        ordered, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(ordered, dim=-1)
        if self.top_p < 1.0:
            kept = max(1, int(torch.count_nonzero(cumulative - ordered < self.top_p)))
            ordered, order, cumulative = ordered[:kept], order[:kept], cumulative[:kept]
        return ordered, order, cumulative

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        ordered, order, cumulative = self._nucleus(logits)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(0, order, ordered / cumulative[-1])

    def pick(self, logits: torch.Tensor) -> int:
        ordered, order, cumulative = self._nucleus(logits)
        threshold = torch.rand(1, generator=self.generator) * cumulative[-1]
        index = torch.searchsorted(cumulative, threshold, right=True).clamp_(max=len(order) - 1)
        return int(order[index])


def rows(vocab: int) -> list[torch.Tensor]:
    """Peaked, flat (a nucleus far larger than the first top-k guess) and grammar-masked rows. No two
    logits are equal (tied tokens may be ordered differently by a sort and by topk: the same
    distribution, other draws)."""
    generator = torch.Generator().manual_seed(7)
    peaked = torch.randn(vocab, generator=generator) * 4
    flat = torch.randperm(vocab, generator=generator).float() * (3.0 / vocab)
    masked = torch.randn(vocab, generator=generator)
    masked[torch.rand(vocab, generator=generator) < 0.999] = float("-inf")
    single = torch.full((vocab,), float("-inf"))
    single[vocab // 3] = 0.0
    return [peaked, flat, masked, single]


@pytest.mark.parametrize(
    ("top_p", "temperature"), [(0.05, 1.0), (0.5, 0.3), (0.9, 0.6), (0.9, 1.7), (0.999, 1.0)]
)
def test_same_nucleus_probabilities_and_seeded_draws_as_a_full_sort(top_p, temperature) -> None:
    for row in rows(32_064):
        new = Sampler(temperature=temperature, top_p=top_p, seed=11)
        old = FullSortSampler(temperature=temperature, top_p=top_p, seed=11)
        assert torch.equal(new.probabilities(row), old.probabilities(row))
        assert [new.pick(row) for _ in range(10)] == [old.pick(row) for _ in range(10)]


def test_a_nucleus_larger_than_the_first_guess_grows_to_fit() -> None:
    flat = torch.zeros(10_000)
    ordered, _, _ = Sampler(temperature=1.0, top_p=0.9, seed=0).nucleus(flat)
    assert len(ordered) == 9000 > FIRST_TOP_K


def test_without_top_p_it_samples_the_whole_distribution() -> None:
    logits = torch.tensor([0.0, 1.0, float("-inf"), 2.0, -1.0])
    sampler = Sampler(temperature=1.0, top_p=1.0, seed=3)
    expected = torch.softmax(logits, dim=-1)
    assert torch.allclose(sampler.probabilities(logits), expected)
    draws = torch.tensor([sampler.pick(logits) for _ in range(20_000)])
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    assert frequencies[2] == 0
    assert torch.allclose(frequencies, expected, atol=0.015)


def test_greedy_is_the_argmax() -> None:
    row = rows(1000)[0]
    assert Sampler(temperature=0.0, top_p=0.9, seed=0).pick(row) == int(torch.argmax(row))
