"""A tiny random SDXL (UNet, CLIP-L, CLIP-G, CLIP tokenizers, VAE) built in code, for tests and benches.

Same classes and config shapes as a real SDXL checkpoint (three UNet levels, cross-attention at
latent/2 and latent/4, ``text_time`` micro-conditioning, a VAE with scale factor 8), only a few
megabytes, so every real diffusers/transformers code path runs on a CPU in a fraction of a second.
Saved as a diffusers folder and as one ``.safetensors`` file (diffusers key layout, one prefix per
component), the two forms ``omost_engine.render.loading`` accepts besides a hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

# Words that get their own BPE token, so prompts are a handful of tokens rather than one per letter.
_WORD_TEXT = (
    "a an the of and with in on at to is are by from his her their its this that it as over under "
    "fierce battle between warriors dragon stormy sky flashes lightning background dark clouds "
    "cat cats dog sofa room empty white minimal red green blue yellow black grey stone wall low "
    "sitting row three sit side behind them pale quiet realistic textured photo high quality "
    "light warm cosy living scene group mighty epic armor swords shields left right center top bottom "
    "man woman tree house river mountain forest city street car sun moon night day water fire"
)

SPECIAL_BOS = "<|startoftext|>"
SPECIAL_EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character table (the standard GPT-2 construction)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_clip_vocab(folder: Path) -> tuple[Path, Path]:
    """Write a small CLIP ``vocab.json`` + ``merges.txt``: all bytes, bytes + ``</w>``, merges for ``_WORD_TEXT``."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in dict.fromkeys(_WORD_TEXT.split()):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merge = f"{left} {right}"
            left = left + right
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(left, len(vocab))
    vocab.setdefault(SPECIAL_BOS, len(vocab))
    vocab.setdefault(SPECIAL_EOS, len(vocab))
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


@dataclass(frozen=True, kw_only=True)
class TinySDXLPaths:
    folder: Path  # diffusers folder (model_index.json, unet/, vae/, text_encoder/, ...)
    single_file: Path  # the same weights in one .safetensors (keys prefixed "unet.", "vae.", ...)


def build_tiny_sdxl(*, seed: int = 0) -> dict[str, object]:
    """The components of a tiny SDXL pipeline with seeded random weights (float32, CPU)."""
    import tempfile

    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = write_clip_vocab(Path(tmp))
        tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=77)
        tokenizer_2 = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=77, pad_token="!")
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_config)).eval()
    # diffusers' top level types its classes as the placeholders it uses without torch: cast to what they are
    unet = cast(
        torch.nn.Module,
        UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32, 32),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 2, 4),
            transformer_layers_per_block=(1, 1, 2),
            use_linear_projection=True,
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        ),
    ).eval()
    vae = cast(
        torch.nn.Module,
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=64,
            layers_per_block=1,
            block_out_channels=(8, 16, 16, 16),
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.13025,
        ),
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
    )


def save_tiny_sdxl(root: Path, *, seed: int = 0) -> TinySDXLPaths:
    """Build the tiny SDXL and save it under ``root`` as a diffusers folder and as one safetensors file."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    root = Path(root)
    components = build_tiny_sdxl(seed=seed)
    pipe: Any = StableDiffusionXLPipeline(**components)  # Any: typed as diffusers' no-torch placeholder
    folder = root / "tiny-sdxl"
    pipe.save_pretrained(folder)
    tensors: dict[str, torch.Tensor] = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = components[name]
        assert isinstance(module, torch.nn.Module)
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().clone()
    single_file = root / "tiny-sdxl.safetensors"
    save_file(tensors, str(single_file), metadata={"format": "pt", "layout": "diffusers"})
    return TinySDXLPaths(folder=folder, single_file=single_file)
