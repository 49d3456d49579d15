"""Method "area": overlap masks and blends against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from omost_engine.conditions import Condition
from omost_engine.render.area import area_weights, blend, overlap_masks


def _mask(rect: tuple[int, int, int, int]) -> torch.Tensor:
    return torch.from_numpy(Condition(rect=rect, prefixes=(), suffixes=(), color=(0, 0, 0)).mask())


GLOBAL = (0, 90, 0, 90)
FAR = (0, 60, 0, 60)  # region 1 (farther)
NEAR = (30, 90, 30, 90)  # region 2 (nearer), overlaps FAR on rows/cols 30..59
MASKS = torch.stack([_mask(GLOBAL), _mask(FAR), _mask(NEAR)])
# Pixels (row, col): only FAR, both, only NEAR, none.
ONLY_FAR, BOTH, ONLY_NEAR, NONE = (10, 10), (45, 45), (80, 80), (10, 80)


def test_overlay_gives_overlaps_to_the_nearest_region() -> None:
    out = overlap_masks(MASKS[1:], "overlay")
    assert out[0][BOTH] == 0 and out[1][BOTH] == 1
    assert out[0][ONLY_FAR] == 1 and out[1][ONLY_NEAR] == 1
    assert float(out.sum(0).max()) == 1.0


def test_average_shares_overlaps() -> None:
    out = overlap_masks(MASKS[1:], "average")
    assert float(out[0][BOTH]) == pytest.approx(0.5) and float(out[1][BOTH]) == pytest.approx(0.5)
    assert float(out[0][ONLY_FAR]) == pytest.approx(1.0)
    assert float(out[:, NONE[0], NONE[1]].sum()) == 0


@pytest.mark.parametrize("overlap", ["overlay", "average"])
def test_blend_matches_hand_computed_predictions(overlap: str) -> None:
    g, a, b = 1.0, 10.0, 100.0  # constant predictions of global, FAR, NEAR
    preds = torch.stack([torch.full((4, 90, 90), v) for v in (g, a, b)])
    weights = area_weights(
        MASKS, overlap=overlap, global_strength=0.2, region_strength=0.8, latent_hw=(90, 90)
    )
    out = blend(preds, weights)[0]
    assert float(out[NONE]) == pytest.approx(g)
    assert float(out[ONLY_FAR]) == pytest.approx(0.2 * g + 0.8 * a, rel=1e-5)
    assert float(out[ONLY_NEAR]) == pytest.approx(0.2 * g + 0.8 * b, rel=1e-5)
    expected_both = 0.2 * g + 0.8 * b if overlap == "overlay" else 0.2 * g + 0.4 * a + 0.4 * b
    assert float(out[BOTH]) == pytest.approx(expected_both, rel=1e-5)


def test_only_the_strength_ratio_matters_inside_regions() -> None:
    preds = torch.stack([torch.full((1, 90, 90), v) for v in (1.0, 10.0, 100.0)])
    low = blend(
        preds,
        area_weights(MASKS, overlap="overlay", global_strength=0.1, region_strength=0.4, latent_hw=(90, 90)),
    )
    high = blend(
        preds,
        area_weights(MASKS, overlap="overlay", global_strength=0.2, region_strength=0.8, latent_hw=(90, 90)),
    )
    torch.testing.assert_close(low, high)


def test_masks_are_resized_bilinearly_to_the_latent() -> None:
    weights = area_weights(
        MASKS, overlap="overlay", global_strength=0.2, region_strength=0.8, latent_hw=(32, 24)
    )
    assert weights.shape == (3, 32, 24)
    torch.testing.assert_close(weights[0], torch.full((32, 24), 0.2))
    expected = (
        torch.nn.functional.interpolate(
            overlap_masks(MASKS[1:], "overlay")[:, None], size=(32, 24), mode="bilinear", align_corners=False
        )[:, 0]
        * 0.8
    )
    torch.testing.assert_close(weights[1:], expected)
    edge = weights[1][:, 15:18]  # FAR's right edge (column 60 of 90) falls between latent columns: soft
    assert bool(((edge > 0) & (edge < 0.8)).any())
