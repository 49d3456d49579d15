"""Method "area": ComfyUI_omost's layout conditioning, a mask-weighted blend of per-condition predictions.

Each condition is predicted by its own full-frame UNet pass; per latent pixel the positive prediction
is sum_i w_i pred_i / (sum_i w_i + 1e-37) with w_i = strength_i x mask_i, where the global condition
has an all-ones mask and ``global_strength``, the regions ``region_strength`` and masks made
disjoint (``overlay``: the nearest region covering a cell owns it) or shared (``average``: each of k
covering regions gets 1/k). The 90x90 masks are resized bilinearly to the latent, as ComfyUI does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from omost_engine.params import Overlap

BLEND_EPS = 1e-37


def overlap_masks(masks: torch.Tensor, overlap: Overlap) -> torch.Tensor:
    """(R, 90, 90) region masks (far to near, global excluded) -> their effective masks on the grid."""
    if overlap == "overlay":
        claimed = torch.zeros_like(masks[0])
        out = torch.zeros_like(masks)
        for i in reversed(range(len(masks))):  # nearest first
            out[i] = masks[i] * (1 - claimed)
            claimed = claimed + out[i]
        return out
    if overlap == "average":
        counter = masks.sum(dim=0) + 1e-6
        return masks / counter
    raise ValueError(f"overlap must be overlay or average, not {overlap!r}")


def area_weights(
    masks: torch.Tensor,
    *,
    overlap: Overlap,
    global_strength: float,
    region_strength: float,
    latent_hw: tuple[int, int],
) -> torch.Tensor:
    """Blend weights (R, h, w) for the conditions (global first) at the latent size."""
    regions = overlap_masks(masks[1:].float(), overlap)
    grid = torch.cat([torch.ones_like(masks[:1], dtype=torch.float32), regions])
    resized = F.interpolate(grid[:, None], size=latent_hw, mode="bilinear", align_corners=False)[:, 0]
    strengths = torch.tensor([global_strength] + [region_strength] * (len(masks) - 1), dtype=torch.float32)
    return resized * strengths[:, None, None]


def blend(predictions: Sequence[torch.Tensor] | torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i p_i / (sum_i w_i + eps); predictions (R, C, h, w), weights (R, h, w). Float32 math."""
    preds = predictions if isinstance(predictions, torch.Tensor) else torch.stack(list(predictions))
    w = weights.to(preds.device, torch.float32)[:, None]
    total = (w * preds.float()).sum(dim=0)
    return total / (w.sum(dim=0) + BLEND_EPS)
