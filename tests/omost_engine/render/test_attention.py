"""The regional cross-attention processor against goldens 71/72 and the explicit formulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from omost_engine.conditions import Condition
from omost_engine.render.attention import (
    RegionalAttention,
    RegionalAttnProcessor,
    RegionState,
    explicit_regional_attention,
    regional_attention,
    regional_sdpa,
    resize_masks,
    token_scale_matrix,
)

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


def _golden(name: str) -> dict:
    return json.loads((GOLDENS / name).read_text())


def _mask(rect: list[int]) -> torch.Tensor:
    return torch.from_numpy(Condition(rect=tuple(rect), prefixes=(), suffixes=(), color=(0, 0, 0)).mask())


def test_mask_resize_matches_golden_71() -> None:
    rows = _golden("71_mask_downsample.json")["rows"]
    assert len(rows) > 50
    for row in rows:
        height, width = row["attn_hw"]
        resized = resize_masks(_mask(row["rect_90"])[None], height, width)[0]
        ys, xs = torch.nonzero(resized, as_tuple=True)
        assert [int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1] == row["rect_attn"]
        assert float(resized.sum()) == row["sum"]


@pytest.fixture(scope="module")
def golden72() -> dict:
    return _golden("72_cross_attention_processor.json")


def _attention_module(weights: dict, heads: int, head_dim: int) -> Attention:
    query_dim = len(weights["to_q"][0])
    cross_dim = len(weights["to_k"][0])
    attn = Attention(
        query_dim=query_dim, cross_attention_dim=cross_dim, heads=heads, dim_head=head_dim, out_bias=True
    )
    with torch.no_grad():
        attn.to_q.weight.copy_(torch.tensor(weights["to_q"]))
        attn.to_k.weight.copy_(torch.tensor(weights["to_k"]))
        attn.to_v.weight.copy_(torch.tensor(weights["to_v"]))
        attn.to_out[0].weight.copy_(torch.tensor(weights["to_out_weight"]))
        attn.to_out[0].bias.copy_(torch.tensor(weights["to_out_bias"]))
    return attn.eval()


def _golden_state(golden: dict) -> tuple[RegionState, torch.Tensor, torch.Tensor]:
    cross = golden["cross"]
    masks = torch.stack([_mask(c["rect_90"]) for c in cross["conditions"]])
    context = torch.cat([torch.tensor(c["tokens"]) for c in cross["conditions"]])[None]
    token_region = torch.cat([torch.full((len(c["tokens"]),), i) for i, c in enumerate(cross["conditions"])])
    _, _, height, width = golden["hidden_states_original_shape"]
    state = RegionState(masks=masks, token_region=token_region[None], latent_hw=(height, width))
    return state, torch.tensor(cross["hidden_states"])[None], context


def test_processor_reproduces_golden_72(golden72: dict) -> None:
    cross = golden72["cross"]
    attn = _attention_module(cross["weights"], golden72["heads"], golden72["head_dim"])
    controller = RegionalAttention()
    attn.set_processor(RegionalAttnProcessor(controller))
    state, hidden, context = _golden_state(golden72)
    with torch.no_grad(), controller.regions(state.masks, state.token_region, state.latent_hw):
        out = attn(hidden, encoder_hidden_states=context)
    torch.testing.assert_close(out[0], torch.tensor(cross["output"]), atol=1e-5, rtol=1e-5)
    # Without regions the same processor is plain attention: a different result.
    with torch.no_grad():
        plain = attn(hidden, encoder_hidden_states=context)
    assert (plain - out).abs().max() > 1e-3


def test_token_mask_scale_and_probabilities_match_golden_72(golden72: dict) -> None:
    cross = golden72["cross"]
    state, hidden, context = _golden_state(golden72)
    n = hidden.shape[1]
    visible, scale = token_scale_matrix(state, n)
    assert visible[0].float().tolist() == cross["token_masks_HWxT"]
    assert scale[0].tolist() == cross["token_mask_scale"]
    heads, head_dim = golden72["heads"], golden72["head_dim"]
    weights = {k: torch.tensor(v) for k, v in cross["weights"].items()}
    q = (hidden @ weights["to_q"].T).view(1, n, heads, head_dim).transpose(1, 2)
    k = (context @ weights["to_k"].T).view(1, -1, heads, head_dim).transpose(1, 2)
    tokens = k.shape[2]
    # The fused path's probabilities: attend to the identity matrix as values.
    eye = torch.eye(tokens).expand(1, heads, tokens, tokens)
    bias, key_scale = state.bias_and_scale(n, torch.float32, torch.device("cpu"))
    probs = regional_sdpa(q, k, eye, bias, key_scale)
    expected = torch.tensor(cross["attention_probs_heads"])
    torch.testing.assert_close(probs[0], expected, atol=1e-5, rtol=1e-5)
    _, explicit = explicit_regional_attention(q, k, eye, visible, scale)
    torch.testing.assert_close(explicit[0], expected, atol=1e-5, rtol=1e-5)


def test_self_attention_untouched_reproduces_golden_72(golden72: dict) -> None:
    block = golden72["self_attention"]
    attn = _attention_module(block["weights"], golden72["heads"], golden72["head_dim"])
    attn.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        out = attn(torch.tensor(block["hidden_states"])[None])
    torch.testing.assert_close(out[0], torch.tensor(block["output"]), atol=1e-5, rtol=1e-5)


def test_pixel_attends_only_to_global_and_covering_regions() -> None:
    torch.manual_seed(0)
    rects = [[0, 90, 0, 90], [0, 45, 0, 90], [30, 90, 30, 90], [60, 90, 0, 30]]
    masks = torch.stack([_mask(r) for r in rects])
    per_region = [3, 2, 4, 2]
    token_region = torch.cat([torch.full((t,), i) for i, t in enumerate(per_region)])
    # Batch row 1 is a negative prompt: three tokens of a full mask, then padding nobody sees.
    negative = torch.cat([torch.zeros(3, dtype=torch.long), torch.full((len(token_region) - 3,), -1)])
    state = RegionState(masks=masks, token_region=torch.stack([token_region, negative]), latent_hw=(18, 12))
    height, width = 9, 6
    n, heads, d, tokens = height * width, 2, 8, len(token_region)
    q, k = torch.randn(2, heads, n, d), torch.randn(2, heads, tokens, d)
    plan = state.plan(n, torch.float32, torch.device("cpu"))
    # The negative row runs unmasked over its three live tokens; the positive row masked over all.
    assert [(p.rows, p.tokens, p.bias is None, p.key_scale is None) for p in plan] == [
        (slice(0, 1), tokens, False, False),
        (slice(1, 2), 3, True, True),
    ]
    probs = regional_attention(q, k, torch.eye(tokens).expand(2, heads, tokens, tokens), plan)
    bias, key_scale = state.bias_and_scale(n, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(
        probs, regional_sdpa(q, k, torch.eye(tokens).expand(2, heads, tokens, tokens), bias, key_scale)
    )
    resized = resize_masks(masks, height, width).reshape(len(rects), n)
    for p in range(n):
        for j in range(tokens):
            region = int(token_region[j])
            covered = bool(resized[region, p] > 0.5)
            assert (probs[0, :, p, j] > 0).all() == covered, (p, j)
            assert (probs[1, :, p, j] > 0).all() == (j < 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, heads, n))
    # A region's logits are multiplied by image area / region area at this resolution.
    area = resized.sum(dim=1)
    assert key_scale[0, 0, :, 0].tolist() == pytest.approx([float(n / area[int(r)]) for r in token_region])
    assert key_scale[1, 0, :, 0].tolist() == [1.0] * tokens


def test_grid_inferred_from_latent_and_sequence_length() -> None:
    state = RegionState(
        masks=torch.ones(1, 90, 90), token_region=torch.zeros(1, 1, dtype=torch.long), latent_hw=(144, 112)
    )
    assert state.grid_for(144 * 112) == (144, 112)
    assert state.grid_for(72 * 56) == (72, 56)
    assert state.grid_for(36 * 28) == (36, 28)
    odd = RegionState(
        masks=torch.ones(1, 90, 90), token_region=torch.zeros(1, 1, dtype=torch.long), latent_hw=(13, 9)
    )
    assert odd.grid_for(7 * 5) == (7, 5)
    with pytest.raises(ValueError):
        state.grid_for(1000)


class ReferenceOmostProcessor:
    """The original's formulation, written independently: explicit scores, H x W from the aspect ratio
    (as ComfyUI_densediffusion does), masks resized per call, one prompt per UNet call."""

    def __init__(self, masks: torch.Tensor, token_counts: list[int], latent_hw: tuple[int, int]) -> None:
        self.masks, self.token_counts, self.latent_hw = masks, token_counts, latent_hw

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        batch, n, _ = hidden_states.shape
        h_lat, w_lat = self.latent_hw
        height = round((n * h_lat / w_lat) ** 0.5)
        width = n // height
        tokens = encoder_hidden_states.shape[1]
        if tokens == sum(self.token_counts):
            resized = torch.nn.functional.interpolate(
                self.masks[:, None], size=(height, width), mode="nearest-exact"
            )[:, 0].reshape(len(self.masks), n)
            m = torch.cat([resized[i][:, None].expand(n, c) for i, c in enumerate(self.token_counts)], dim=1)
        else:  # the negative prompt: one full mask
            m = torch.ones(n, tokens)
        scale = n / m.sum(dim=0)
        q = attn.to_q(hidden_states).view(batch, n, attn.heads, -1).transpose(1, 2)
        k = attn.to_k(encoder_hidden_states).view(batch, tokens, attn.heads, -1).transpose(1, 2)
        v = attn.to_v(encoder_hidden_states).view(batch, tokens, attn.heads, -1).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * scale
        scores = scores.masked_fill(m <= 0.5, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def test_processor_in_the_unet_equals_the_original_two_pass_formulation(tiny_components) -> None:
    """The whole tiny UNet: ours (positive + padded negative in one batch) vs the reference (two calls)."""
    unet = tiny_components.unet
    saved = dict(unet.attn_processors)
    try:
        torch.manual_seed(3)
        latent_hw = (12, 20)  # non-square; layers at 6x10 and 3x5
        rects = [[0, 90, 0, 90], [0, 50, 0, 60], [30, 90, 40, 90]]
        masks = torch.stack([_mask(r) for r in rects])
        counts = [77, 154, 77]
        dim = unet.config.cross_attention_dim
        positive, negative = torch.randn(1, sum(counts), dim), torch.randn(1, 77, dim)
        x = torch.randn(1, 4, *latent_hw)
        t = torch.tensor(500)
        added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[96.0, 160, 0, 0, 96, 160]])}

        controller = RegionalAttention()
        controller.install(unet)
        token_region = torch.tensor(
            [
                [i for i, c in enumerate(counts) for _ in range(c)],
                [len(rects)] * 77 + [-1] * (sum(counts) - 77),
            ]
        )
        context = torch.cat([positive, torch.nn.functional.pad(negative, (0, 0, 0, sum(counts) - 77))])
        with (
            torch.no_grad(),
            controller.regions(torch.cat([masks, torch.ones(1, 90, 90)]), token_region, latent_hw),
        ):
            ours = unet(
                x.expand(2, -1, -1, -1),
                t,
                encoder_hidden_states=context,
                added_cond_kwargs={k: v.expand(2, -1) for k, v in added.items()},
            ).sample

        reference = {
            name: (
                ReferenceOmostProcessor(masks, counts, latent_hw)
                if name.endswith("attn2.processor")
                else AttnProcessor2_0()
            )
            for name in saved
        }
        unet.set_attn_processor(dict(reference))
        with torch.no_grad():
            ref_pos = unet(x, t, encoder_hidden_states=positive, added_cond_kwargs=added).sample
            ref_neg = unet(x, t, encoder_hidden_states=negative, added_cond_kwargs=added).sample
        torch.testing.assert_close(ours[0:1], ref_pos, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours[1:2], ref_neg, atol=1e-4, rtol=1e-4)
        assert (ref_pos - ref_neg).abs().max() > 1e-3
    finally:
        unet.set_attn_processor(dict(saved))
