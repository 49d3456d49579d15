"""Loading an SDXL model's components from a hub id, a diffusers folder or a single .safetensors file.

* A hub id (``SG161222/RealVisXL_V4.0``, the default) or a local diffusers folder: each component
  from its subfolder (no scheduler: the renderer samples itself).
  Where a component has an ``fp16`` variant (``*.fp16.safetensors``, as the original app asked for
  with ``variant="fp16"``: half the download) it is preferred; without one the plain files load.
* A single checkpoint in the original SDXL layout (what model sites distribute):
  ``StableDiffusionXLPipeline.from_single_file``, which needs the SDXL configs and tokenizers: from
  ``config`` (a diffusers SDXL folder or hub id); by default SDXL base 1.0's, which ship with this
  package (``omost_engine/render/configs``), so such a file loads offline with no extra flag.
* A single ``.safetensors`` in diffusers key layout (``unet.*``, ``vae.*``, ``text_encoder.*``,
  ``text_encoder_2.*``; what ``omost_engine.testing.tiny_sdxl`` writes): the weights from the file,
  configs and tokenizers from ``config`` (default: the shipped SDXL base configs).

Every failure becomes one ``OmostError`` naming the model and what is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from omost_engine.errors import OmostError
from omost_engine.memory import cpu_supports_bf16
from omost_engine.noise import quiet_library_noise

quiet_library_noise()

DEFAULT_MODEL = "SG161222/RealVisXL_V4.0"
# The configs a single file gets without --model-config: SDXL base 1.0's, shipped in the package.
DEFAULT_SINGLE_FILE_CONFIG = "sdxl-base-1.0 (shipped)"
PREFERRED_VARIANT = "fp16"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".sft")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class SDXLComponents:
    model: str  # what the user asked for (hub id or path), recorded in layout meta
    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide the libraries' per-file loading bars (noise in the bot's logs and the CLI), then restore them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = (transformers_logging.is_progress_bar_enabled(), diffusers_logging.is_progress_bar_enabled())
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            transformers_logging.enable_progress_bar()
        if was[1]:
            diffusers_logging.enable_progress_bar()


# From this size of weights a model counts as large: on a CPU with bf16 it loads in bf16, as fp32
# would double its memory (SDXL: ~14 GB in fp32, ~7 GB in bf16).
LARGE_MODEL_BYTES = 1 << 30
DTYPE_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``bf16``/``fp16``/``fp32`` (or the long names) -> a dtype; None or ``auto`` -> None (chosen per device)."""
    if name is None or str(name).strip().lower() == "auto":
        return None
    dtype = DTYPE_NAMES.get(str(name).strip().lower())
    if dtype is None:
        raise OmostError(
            f"unknown dtype {name!r}",
            parameter="dtype",
            value=str(name),
            allowed=["auto", "bf16", "fp16", "fp32"],
        )
    return dtype


def weight_bytes(model: str) -> int | None:
    """The size of a local model's weight files (None for a hub id: not known before the download)."""
    path = Path(model).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in (".safetensors", ".bin", ".ckpt"))
    return None


def dtypes_for(
    device: torch.device, model: str | None = None, forced: torch.dtype | None = None
) -> tuple[torch.dtype, torch.dtype]:
    """(UNet/text encoders, VAE) dtypes. ``forced`` wins (the VAE stays out of fp16, where SDXL's VAE
    overflows). Otherwise fp16 on accelerators with the VAE in bf16 where it exists; on a CPU bf16
    for a large model (a hub id, or 1 GB of weights and more) where the CPU supports it, else fp32."""
    if forced is not None:
        vae = (
            forced
            if forced != torch.float16
            else (
                torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float32
            )
        )
        return forced, vae
    if device.type == "cuda":
        return torch.float16, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)
    if device.type == "mps":
        return torch.float16, torch.float32
    size = weight_bytes(model) if model else None
    if device.type == "cpu" and (size is None or size >= LARGE_MODEL_BYTES) and model and cpu_supports_bf16():
        return torch.bfloat16, torch.bfloat16
    return torch.float32, torch.float32


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _classes() -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {
        "unet": UNet2DConditionModel,
        "vae": AutoencoderKL,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }


def _tokenizers(source: str) -> tuple[Any, Any]:
    from transformers import CLIPTokenizer

    return (
        CLIPTokenizer.from_pretrained(source, subfolder="tokenizer"),
        CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"),
    )


def _from_pretrained_preferring_fp16(cls: Any, source: str, name: str, kwargs: dict[str, Any]) -> Any:
    """The component's ``fp16`` variant where the folder or repository has one, else its plain files."""
    try:
        return cls.from_pretrained(source, subfolder=name, variant=PREFERRED_VARIANT, **kwargs)
    except (
        OSError,
        ValueError,
    ) as exc:  # no such variant files (diffusers: ValueError, transformers: OSError)
        if PREFERRED_VARIANT not in str(exc) and "variant" not in str(exc):
            raise
    return cls.from_pretrained(source, subfolder=name, **kwargs)


def _from_folder_or_hub(source: str, *, dtype: torch.dtype, vae_dtype: torch.dtype) -> SDXLComponents:
    classes = _classes()
    parts: dict[str, Any] = {}
    for name in COMPONENTS:
        cls = classes[name]
        want = vae_dtype if name == "vae" else dtype
        kwargs = {"torch_dtype": want} if name in ("unet", "vae") else {"dtype": want}
        parts[name] = _from_pretrained_preferring_fp16(cls, source, name, kwargs).eval()
    tokenizer, tokenizer_2 = _tokenizers(source)
    return SDXLComponents(model=source, tokenizer=tokenizer, tokenizer_2=tokenizer_2, **parts)


def _is_diffusers_layout(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    return bool(keys) and all(k.split(".", 1)[0] in COMPONENTS for k in keys)


def _from_diffusers_single_file(
    path: Path, config: str, *, dtype: torch.dtype, vae_dtype: torch.dtype
) -> SDXLComponents:
    from safetensors.torch import load_file

    weights = load_file(str(path))
    classes = _classes()
    parts: dict[str, Any] = {}
    for name in COMPONENTS:
        cls = classes[name]
        if name in ("unet", "vae"):
            module = cls.from_config(cls.load_config(config, subfolder=name))
        else:
            module = cls(cls.config_class.from_pretrained(config, subfolder=name))
        prefix = name + "."
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
            problem = (
                f"{len(missing)} missing, {len(unexpected)} unexpected tensors"
                if missing or unexpected
                else ""
            )
        except RuntimeError:  # shape mismatches
            problem = "tensor shapes differ"
        if problem:
            raise OmostError(
                f"{path.name}: the {name} weights do not fit the config in {config} ({problem}); "
                "pass the config folder of the model this file was saved from",
                parameter="model",
                value=str(path),
            )
        want = vae_dtype if name == "vae" else dtype
        parts[name] = (module if want == torch.float32 else module.to(want)).eval()
    tokenizer, tokenizer_2 = _tokenizers(config)
    return SDXLComponents(model=str(path), tokenizer=tokenizer, tokenizer_2=tokenizer_2, **parts)


def _from_original_single_file(
    path: Path, config: str, *, dtype: torch.dtype, vae_dtype: torch.dtype
) -> SDXLComponents:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_single_file(
        str(path),
        config=config,
        torch_dtype=dtype,
        local_files_only=_offline() or Path(config).is_dir(),
    )
    return SDXLComponents(
        model=str(path),
        unet=pipe.unet.eval(),
        vae=pipe.vae.to(vae_dtype).eval(),
        text_encoder=pipe.text_encoder.eval(),
        text_encoder_2=pipe.text_encoder_2.eval(),
        tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2,
    )


def load_components(
    model: str,
    *,
    dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype | None = None,
    config: str | None = None,
) -> SDXLComponents:
    """Load the SDXL parts named by ``model`` (hub id, diffusers folder or single file) onto the CPU."""
    vae_dtype = vae_dtype or dtype
    path = Path(model).expanduser()
    is_file = model.lower().endswith(SINGLE_FILE_SUFFIXES)
    if is_file and not path.is_file():
        raise OmostError(
            f"model file {model} does not exist",
            parameter="model",
            value=model,
            allowed="a hub id, a diffusers folder or a .safetensors file",
        )
    if not is_file and not path.is_dir() and (model.count("/") != 1 or model.startswith((".", "/", "~"))):
        raise OmostError(
            f"model {model!r} is neither a folder, a .safetensors file nor a hub id like {DEFAULT_MODEL}",
            parameter="model",
            value=model,
            allowed="a hub id, a diffusers folder or a .safetensors file",
        )
    if path.is_dir() and not all(
        (path / name).is_dir() for name in (*COMPONENTS, "tokenizer", "tokenizer_2")
    ):
        raise OmostError(
            f"folder {model} is not a diffusers SDXL model: it needs unet/, vae/, text_encoder/, "
            "text_encoder_2/, tokenizer/ and tokenizer_2/",
            parameter="model",
            value=model,
        )
    config_source = config or (str(_shipped_config()) if is_file else DEFAULT_SINGLE_FILE_CONFIG)
    try:
        with _no_progress_bars():
            return _load(model, path, is_file, config_source, dtype=dtype, vae_dtype=vae_dtype)
    except OmostError:
        raise
    except Exception as exc:  # library errors of every kind: one clear message instead of a traceback
        raise _load_error(model, path, is_file, config_source, exc) from exc


def _shipped_config() -> Path:
    from omost_engine.render.configs import sdxl_base_config_dir

    return sdxl_base_config_dir()


def _load(
    model: str, path: Path, is_file: bool, config_source: str, *, dtype: torch.dtype, vae_dtype: torch.dtype
) -> SDXLComponents:
    if not is_file:
        return _from_folder_or_hub(str(path) if path.is_dir() else model, dtype=dtype, vae_dtype=vae_dtype)
    if path.suffix == ".safetensors" and _is_diffusers_layout(path):
        return _from_diffusers_single_file(path, config_source, dtype=dtype, vae_dtype=vae_dtype)
    return _from_original_single_file(path, config_source, dtype=dtype, vae_dtype=vae_dtype)


def _load_error(model: str, path: Path, is_file: bool, config_source: str, exc: Exception) -> OmostError:
    text = " ".join(str(exc).split())
    reason = (text if len(text) <= 300 else text[:297] + "...") or type(exc).__name__
    offline = _offline()
    if is_file:
        cached = offline and not Path(config_source).is_dir()
        need = (
            "a single file needs the weights of all four SDXL parts, and their configs and tokenizers from "
            f"a diffusers folder or hub id (config: {config_source}"
            + (
                ", which must already be in the Hugging Face cache while HF_HUB_OFFLINE is set"
                if cached
                else ""
            )
            + ")"
        )
    elif path.is_dir():
        need = "a diffusers SDXL folder needs unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/"
    elif offline and isinstance(exc, OSError | ValueError) and _missing_files(text):
        return OmostError(
            f"model {model} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it first "
            f"with `hf download {model}` where the hub is reachable, or unset HF_HUB_OFFLINE",
            parameter="model",
            value=model,
        )
    else:
        need = "the hub id must name a diffusers SDXL repository" + (
            " already in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else ""
        )
    return OmostError(f"could not load model {model}: {reason}; {need}", parameter="model", value=model)


def _missing_files(text: str) -> bool:
    """Whether a library error says the files are not there (rather than that they are broken)."""
    lowered = text.lower()
    return any(
        marker in lowered
        for marker in (
            "does not appear to have a file named",
            "couldn't connect",
            "cannot find the requested files",
            "local_files_only",
            "offline mode",
            "not found in the cache",
            "couldn't find",
        )
    )
