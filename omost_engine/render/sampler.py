"""k-diffusion-style DPM-Solver++(2M) with Karras sigmas, as the original Omost samples SDXL.

Scaled-linear betas (1000 training steps), sigmas from the cumulative alphas, a Karras schedule of
``int(steps / strength)`` points of which the last ``steps + 1`` are used (so img2img strength
starts partway down), the UNet timestep = index of the nearest training log-sigma, and the
deterministic 2M update (first order on the first step and on the step into sigma 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from omost_engine.progress import CancelToken

TRAIN_STEPS = 1000
KARRAS_RHO = 7.0

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma) -> denoised x
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step, total, denoised)


def training_sigmas() -> torch.Tensor:
    """The 1000 training sigmas (float32), sigma_0 = 0.0291675 ... sigma_999 = 14.614642."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def karras_sigmas(steps: int, *, strength: float = 1.0, train: torch.Tensor | None = None) -> torch.Tensor:
    """``steps + 1`` sigmas ending in 0: the tail of a Karras schedule of ``int(steps / strength)`` points."""
    train = training_sigmas() if train is None else train
    points = int(steps / strength)
    sigma_min, sigma_max = float(train[0]), float(train[-1])
    ramp = torch.linspace(0, 1, points, dtype=torch.float32)
    low, high = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    sigmas = (high + ramp * (low - high)) ** KARRAS_RHO
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas[-(steps + 1) :]


def timestep_for(sigma: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """The integer training step whose log-sigma is nearest (no interpolation)."""
    distance = (sigma.reshape(-1, 1).float().log() - train.to(sigma.device).log().reshape(1, -1)).abs()
    return distance.argmin(dim=1).reshape(sigma.shape)


def sample_dpmpp_2m(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    on_step: StepCallback | None = None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Deterministic DPM-Solver++(2M); checks ``cancel`` before every step."""
    old_denoised: torch.Tensor | None = None
    total = len(sigmas) - 1
    for i in range(total):
        if cancel is not None:
            cancel.raise_if_cancelled()
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        if sigma_next == 0:
            x = denoised  # (0/sigma) x - (e^-inf - 1) denoised
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            h = t_next - t
            if old_denoised is None:
                d = denoised
            else:
                h_last = t - (-sigmas[i - 1].log())
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * d
        old_denoised = denoised
        if on_step is not None:
            on_step(i + 1, total, denoised)
    return x
