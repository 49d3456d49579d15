"""Omost's regional cross-attention on fused scaled-dot-product attention.

The rule (original ``OmostCrossAttnProcessor``): pixel p may attend to token j only where the mask of
j's region covers p (after a nearest-exact resize of the 90x90 mask to the layer's H x W), and the
logit of token j is multiplied by s_j = N / (pixels of j's region at this resolution). Global and
negative tokens have full masks, so s = 1 and plain attention.

Instead of building the (B, heads, N, T) score matrix by hand, the scale is folded into the keys,
q . (s_j k_j) = s_j (q . k_j), and the coverage is passed to ``F.scaled_dot_product_attention`` as an
additive mask (0 or -inf), built once per resolution per render and cached.

``RegionalAttention`` is the per-UNet controller: ``install(unet)`` puts a ``RegionalAttnProcessor``
on every attn2 layer (self-attention keeps its processor); ``with controller.regions(...)`` sets the
render's masks for its duration. Without regions the processors are plain SDPA attention.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from omost_engine.conditions import GRID

MASK_ALIGN = 8  # fused kernels want the mask's last stride aligned; the extra columns stay unused


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(R, 90, 90) float masks -> (R, height, width) with nearest-exact, as the original does per layer."""
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="nearest-exact")[:, 0]


@dataclass
class RegionState:
    """One render's regions, as the attention layers need them.

    ``token_region[b, t]`` is the index into ``masks`` of the region that token t of batch row b
    belongs to, or -1 for padding that nobody may see. A negative-prompt row uses a full mask.
    """

    masks: torch.Tensor  # (R, 90, 90)
    token_region: torch.Tensor  # (B, T) long
    latent_hw: tuple[int, int]
    _cache: dict[tuple[int, torch.dtype, str], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False
    )
    _plans: dict[tuple[int, torch.dtype, str], list[RowPlan]] = field(default_factory=dict, repr=False)

    def grid_for(self, n: int) -> tuple[int, int]:
        """The (H, W) of a layer with ``n`` pixels: the latent halved (rounding up) k times."""
        h, w = self.latent_hw
        for _ in range(8):
            if h * w == n:
                return h, w
            h, w = -(-h // 2), -(-w // 2)
        raise ValueError(f"cannot place {n} attention pixels on a {self.latent_hw} latent")

    def bias_and_scale(
        self, n: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive mask (B, 1, N, T) of 0/-inf and key scale (B, 1, T, 1) for a layer with n pixels."""
        key = (n, dtype, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        height, width = self.grid_for(n)
        resized = resize_masks(self.masks.to(device), height, width).reshape(len(self.masks), n)
        covered = resized > 0.5
        area = covered.sum(dim=1).to(torch.float32)
        # Row R is "nobody": padding tokens (index -1) are hidden everywhere.
        covered = torch.cat([covered, torch.zeros(1, n, dtype=torch.bool, device=device)])
        region_scale = torch.where(area > 0, n / area.clamp(min=1.0), torch.ones_like(area))
        region_scale = torch.cat([region_scale, torch.ones(1, device=device)])
        token_region = self.token_region.to(device)
        index = torch.where(token_region < 0, len(self.masks), token_region)
        visible = covered[index].transpose(1, 2)  # (B, N, T)
        batch, tokens = index.shape
        padded = -(-tokens // MASK_ALIGN) * MASK_ALIGN
        bias = torch.zeros(batch, 1, n, padded, dtype=dtype, device=device)[..., :tokens]
        bias.masked_fill_(~visible[:, None], float("-inf"))
        scale = region_scale[index].to(dtype)[:, None, :, None]
        self._cache[key] = (bias, scale)
        return bias, scale

    def plan(self, n: int, dtype: torch.dtype, device: torch.device) -> list[RowPlan]:
        """Row groups for ``regional_attention`` at a layer with n pixels (cached with the masks)."""
        key = (n, dtype, str(device))
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        bias, scale = self.bias_and_scale(n, dtype, device)
        live = (self.token_region >= 0).long().cumsum(dim=1).argmax(dim=1) + 1  # up to the last real token
        specs = []
        for b in range(bias.shape[0]):
            tokens = int(live[b])
            needs_bias = not bool(torch.isfinite(bias[b, :, :, :tokens]).all())
            needs_scale = bool((scale[b, :, :tokens] != 1).any())
            specs.append((tokens, needs_bias, needs_scale))
        plans: list[RowPlan] = []
        start = 0
        for b in range(1, len(specs) + 1):
            if b == len(specs) or specs[b] != specs[start]:
                tokens, needs_bias, needs_scale = specs[start]
                plans.append(
                    RowPlan(
                        rows=slice(start, b),
                        tokens=tokens,
                        bias=bias[start:b, :, :, :tokens] if needs_bias else None,
                        key_scale=scale[start:b, :, :tokens] if needs_scale else None,
                    )
                )
                start = b
        self._plans[key] = plans
        return plans


def regional_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    key_scale: torch.Tensor | None,
) -> torch.Tensor:
    """softmax(s_j (q.k_j) / sqrt(d) + bias) v on the fused kernel; q (B,h,N,d), k/v (B,h,T,d)."""
    return F.scaled_dot_product_attention(q, k if key_scale is None else k * key_scale, v, attn_mask=bias)


@dataclass(frozen=True)
class RowPlan:
    """Consecutive batch rows that attend the same way: over their first ``tokens`` context tokens, with
    a coverage mask and key scale only where some token needs one (the negative prompt needs neither)."""

    rows: slice
    tokens: int
    bias: torch.Tensor | None
    key_scale: torch.Tensor | None


def regional_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: list[RowPlan]
) -> torch.Tensor:
    """What the processor runs: one fused SDPA call per group of rows, each over its live tokens only."""
    outs = [
        regional_sdpa(
            q[row.rows], k[row.rows, :, : row.tokens], v[row.rows, :, : row.tokens], row.bias, row.key_scale
        )
        for row in plan
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def explicit_regional_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, token_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's formulation (hand-built score matrix), kept as the reference for tests and benches.

    ``visible`` (B, N, T) bool, ``token_scale`` (B, T). Returns (output, probabilities).
    """
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5) * token_scale[:, None, None, :]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    probs = scores.softmax(dim=-1)
    return probs @ v, probs


class AttnProcessorHost(Protocol):
    """What a diffusers UNet offers for swapping its attention processors (torch types it as a bare Module)."""

    @property
    def attn_processors(self) -> dict[str, Any]: ...

    def set_attn_processor(self, processor: dict[str, Any]) -> None: ...


class RegionalAttention:
    """Holds the current render's regions for every ``RegionalAttnProcessor`` of one UNet."""

    def __init__(self) -> None:
        self._local = threading.local()  # renders on different threads never see each other's regions
        self.fallback = AttnProcessor2_0()

    @property
    def state(self) -> RegionState | None:
        return getattr(self._local, "state", None)

    @contextmanager
    def regions(
        self, masks: torch.Tensor, token_region: torch.Tensor, latent_hw: tuple[int, int]
    ) -> Iterator[RegionState]:
        if masks.shape[-2:] != (GRID, GRID):
            raise ValueError(f"region masks must be {GRID}x{GRID}, not {tuple(masks.shape[-2:])}")
        previous = self.state
        self._local.state = RegionState(masks=masks, token_region=token_region, latent_hw=latent_hw)
        try:
            yield self._local.state
        finally:
            self._local.state = previous

    def installed_on(self, unet: AttnProcessorHost) -> bool:
        processors = unet.attn_processors
        cross = [p for name, p in processors.items() if name.endswith("attn2.processor")]
        return bool(cross) and all(
            isinstance(p, RegionalAttnProcessor) and p.controller is self for p in cross
        )

    def install(self, unet: AttnProcessorHost) -> None:
        """Put a regional processor on every cross-attention (attn2) layer of ``unet``."""
        processors = dict(unet.attn_processors)
        for name in processors:
            if name.endswith("attn2.processor"):
                processors[name] = RegionalAttnProcessor(self)
        unet.set_attn_processor(dict(processors))  # a copy: diffusers empties the dict


class RegionalAttnProcessor:
    """A diffusers attention processor for attn2 layers; see the module docstring for the rule."""

    def __init__(self, controller: RegionalAttention) -> None:
        self.controller = controller

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        state = self.controller.state
        if state is None or encoder_hidden_states is None or attention_mask is not None:
            return self.controller.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, n, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if tuple(state.token_region.shape) != (batch, key.shape[2]):
            raise ValueError(
                f"regions were set for {tuple(state.token_region.shape)} (rows, tokens) but "
                f"attention got {batch} rows of {key.shape[2]} tokens"
            )
        out = regional_attention(query, key, value, state.plan(n, query.dtype, query.device))
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        scaled: torch.Tensor = out / attn.rescale_output_factor
        return scaled


def token_scale_matrix(state: RegionState, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible (B, N, T) bool, scale (B, T)) for ``explicit_regional_attention`` (tests, benches)."""
    bias, scale = state.bias_and_scale(n, torch.float32, state.masks.device)
    return torch.isfinite(bias[:, 0]), scale[:, 0, :, 0]
