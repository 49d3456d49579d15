"""SDXL at its real configuration (the shipped base configs), with the real CLIP tokenizers and
random weights: the regional render runs through both methods at every real attention resolution."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from omost_engine.layout import Layout
from omost_engine.memory import ModelManager
from omost_engine.params import RenderParams
from omost_engine.render.configs import clip_vocab_and_merges, sdxl_base_config_dir
from omost_engine.reply import parse_reply

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"

# bfloat16 as on a GPU where the CPU computes it natively; elsewhere (AVX2 only) oneDNN emulates it and one
# step of the real UNet takes over ten minutes, so the UNet runs in float32 there (what is checked here is
# the attention at the real configuration, not the number format).
UNET_DTYPE = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def test_shipped_clip_vocabulary_is_the_registry_one(real_formats: Path) -> None:
    """The vocabulary shipped in the package equals the one in the open_clip_torch wheel, and the
    tokenizers built from it split text as CLIP does."""
    from transformers import CLIPTokenizer

    assert (
        clip_vocab_and_merges(real_formats / "clip" / "bpe_simple_vocab_16e6.txt.gz")
        == clip_vocab_and_merges()
    )
    folder = sdxl_base_config_dir()
    clip_l = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    clip_g = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
    assert len(clip_l) == len(clip_g) == 49408
    assert clip_l("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_g("a photo of a cat", padding="max_length", max_length=9).input_ids[-2:] == [0, 0]  # "!" pads
    assert clip_l("a photo of a cat", padding="max_length", max_length=9).input_ids[-2:] == [49407, 49407]


@pytest.fixture(scope="module")
def real_sdxl():
    from omost_engine.render.pipeline import RegionalPipeline
    from omost_engine.testing.real_formats import real_sdxl_components

    components = real_sdxl_components(text_layers=2, dtype=UNET_DTYPE)
    return RegionalPipeline(components, memory=ModelManager(device="cpu"))


@pytest.mark.parametrize("method", ["omost", "area"])
def test_regional_render_at_the_real_unet_configuration(real_sdxl, method) -> None:
    """bf16 (float32 without native bf16), one step, 256x256 (latent 32x32): cross-attention runs at 16x16 and 8x8 in all 70
    transformer blocks of SDXL's UNet, with golden 04's regions."""
    unet = real_sdxl.components.unet
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert unet.dtype == UNET_DTYPE
    layout = _layout_of("04")
    seen: Counter[int] = Counter()
    hooks = [
        module.register_forward_pre_hook(lambda _m, args: seen.update([args[0].shape[1]]))
        for name, module in unet.named_modules()
        if name.endswith("attn2")
    ]
    try:
        image = real_sdxl(
            layout.conditions, RenderParams(width=256, height=256, steps=1, method=method, seed=1)
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert image.size == (256, 256)
    pixels = np.asarray(image)
    assert pixels.std() > 0
    calls = sum(seen.values())
    assert set(seen) == {16 * 16, 8 * 8}
    assert calls % 70 == 0 and calls >= 70  # every transformer block of the real UNet, once per UNet call


def _layout_of(case: str) -> Layout:
    (path,) = GOLDENS.glob(f"{case}_*.json")
    return parse_reply(json.loads(path.read_text())["bot_response"])
