"""Karras sigmas, timesteps and DPM++ 2M against closed forms."""

from __future__ import annotations

import pytest
import torch

from omost_engine.errors import CancelledError
from omost_engine.progress import CancelToken
from omost_engine.render.sampler import karras_sigmas, sample_dpmpp_2m, timestep_for, training_sigmas


def test_training_sigmas_match_the_original() -> None:
    sigmas = training_sigmas()
    assert sigmas.shape == (1000,)
    assert float(sigmas[0]) == pytest.approx(0.0291675, rel=1e-5)
    assert float(sigmas[-1]) == pytest.approx(14.614642, rel=1e-6)
    assert bool((sigmas[1:] > sigmas[:-1]).all())


def test_karras_schedule_and_strength() -> None:
    train = training_sigmas()
    full = karras_sigmas(25)
    assert len(full) == 26 and float(full[-1]) == 0.0
    assert float(full[0]) == pytest.approx(float(train[-1]), rel=1e-6)
    assert float(full[-2]) == pytest.approx(float(train[0]), rel=1e-5)
    rho = 7.0
    i = 10
    expected = (
        float(train[-1]) ** (1 / rho)
        + i / 24 * (float(train[0]) ** (1 / rho) - float(train[-1]) ** (1 / rho))
    ) ** rho
    assert float(full[i]) == pytest.approx(expected, rel=1e-5)
    # HR fix 20 steps at denoise 0.4: the last 21 of a 50-point schedule, starting near sigma 0.6403.
    hires = karras_sigmas(20, strength=0.4)
    assert len(hires) == 21
    assert float(hires[0]) == pytest.approx(0.6403, abs=1e-3)
    torch.testing.assert_close(hires, karras_sigmas(50)[-21:])


def test_timestep_is_nearest_training_log_sigma() -> None:
    train = training_sigmas()
    assert int(timestep_for(train[-1], train)) == 999
    assert int(timestep_for(train[0], train)) == 0
    between = (train[500].log() * 0.7 + train[501].log() * 0.3).exp()
    assert int(timestep_for(between, train)) == 500
    assert timestep_for(torch.stack([train[3], train[700]]), train).tolist() == [3, 700]


def _gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser for data ~ N(0, 1): the probability-flow ODE has a closed-form solution."""
    return x / (1 + sigma**2)


def _errors(steps: int) -> tuple[float, float]:
    """Relative errors at sigma 0 of DPM++ 2M and of the first-order update, against the exact ODE solution."""
    sigmas = karras_sigmas(steps)
    x0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    exact = x0 / (1 + sigmas[0] ** 2) ** 0.5
    second = sample_dpmpp_2m(_gaussian_denoiser, x0.clone(), sigmas)
    first = x0.clone()  # DPM-Solver++(1): the first-order update on every step
    for sigma, nxt in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = _gaussian_denoiser(first, sigma)
        first = d if nxt == 0 else (nxt / sigma) * first - torch.expm1(-(sigma.log() - nxt.log())) * d
    scale = float(exact.abs().max())
    return float((second - exact).abs().max()) / scale, float((first - exact).abs().max()) / scale


def test_dpmpp_2m_converges_faster_than_first_order() -> None:
    err_2m_24, err_1_24 = _errors(24)
    err_2m_48, err_1_48 = _errors(48)
    assert err_2m_24 < err_1_24 / 4
    assert err_2m_48 < err_2m_24 / 3  # at least second-order convergence when the steps halve
    assert 1.5 < err_1_24 / err_1_48 < 2.5  # the first-order reference halves its error
    assert err_2m_48 < 5e-3


def test_progress_and_cancel_between_steps() -> None:
    sigmas = karras_sigmas(5)
    calls: list[int] = []
    token = CancelToken()

    def on_step(step: int, total: int, denoised: torch.Tensor) -> None:
        calls.append(step)
        assert total == 5
        if step == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        sample_dpmpp_2m(_gaussian_denoiser, torch.ones(1, 4, 2, 2), sigmas, on_step=on_step, cancel=token)
    assert calls == [1, 2]
