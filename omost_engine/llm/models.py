"""Which LLMs write canvas programs, and loading them with transformers once per process.

The three published Omost models (and their full-precision repos) are known by name; any other
hub id or local folder works too. Quantisation comes from the checkpoint's own config, as in the
original app; the compute dtype is bf16 (fp16 on older cards) on a GPU and fp32 on the CPU.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from omost_engine.errors import OmostError
from omost_engine.noise import quiet_library_noise

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from omost_engine.memory import ModelManager

log = logging.getLogger(__name__)
quiet_library_noise()

Family = Literal["llama-3", "phi-3"]
Quantization = Literal["4bit", "8bit", "none"]

# The name the LLM is registered under in the shared ModelManager.
MANAGER_NAME = "llm"
DEFAULT_LLM = "lllyasviel/omost-llama-3-8b-4bits"
# Above this many parameters a model is refused on a machine without a GPU, unless forced.
CPU_PARAMETER_LIMIT = 2.0e9
# From this many parameters a model loads in bf16 on a CPU that supports it (fp32 would double its memory).
CPU_BF16_MIN_PARAMETERS = 1.0e9


@dataclass(frozen=True, kw_only=True)
class KnownModel:
    repo: str
    family: Family
    quantization: Quantization
    parameters: float  # in billions
    unfiltered: bool = False  # trained on unfiltered data: the bot asks an admin to opt in
    note: str = ""

    @property
    def short_name(self) -> str:
        return self.repo.split("/", 1)[1]


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        repo="lllyasviel/omost-llama-3-8b-4bits",
        family="llama-3",
        quantization="4bit",
        parameters=8.0,
        note="default; preferred in the author's user study; fits 8 GB",
    ),
    KnownModel(
        repo="lllyasviel/omost-dolphin-2.9-llama3-8b-4bits",
        family="llama-3",
        quantization="4bit",
        parameters=8.0,
        unfiltered=True,
        note="unfiltered training data",
    ),
    KnownModel(
        repo="lllyasviel/omost-phi-3-mini-128k-8bits",
        family="phi-3",
        quantization="8bit",
        parameters=3.8,
        note="smaller; do not use phi-3 at 4 bits",
    ),
    KnownModel(
        repo="lllyasviel/omost-llama-3-8b",
        family="llama-3",
        quantization="none",
        parameters=8.0,
        note="full precision (16 GB)",
    ),
    KnownModel(
        repo="lllyasviel/omost-dolphin-2.9-llama3-8b",
        family="llama-3",
        quantization="none",
        parameters=8.0,
        unfiltered=True,
        note="full precision, unfiltered training data",
    ),
    KnownModel(
        repo="lllyasviel/omost-phi-3-mini-128k",
        family="phi-3",
        quantization="none",
        parameters=3.8,
        note="full precision",
    ),
)


def known_model(name: str) -> KnownModel | None:
    """The registry entry for a repo id or its short name (``omost-llama-3-8b-4bits``), else None."""
    for model in KNOWN_MODELS:
        if name in (model.repo, model.short_name):
            return model
    return None


def is_unfiltered(name: str) -> bool:
    model = known_model(name)
    return model.unfiltered if model is not None else False


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a local folder or a hub id (with its registry entry, if any)."""

    location: str
    local: bool
    known: KnownModel | None = None

    @property
    def name(self) -> str:
        return self.known.repo if self.known else self.location


def resolve_model(name: str | None) -> ModelSource:
    """Turn a user's model choice into a source; OmostError for something that cannot be one."""
    name = (name or DEFAULT_LLM).strip()
    known = known_model(name)
    if known is not None:
        return ModelSource(known.repo, local=False, known=known)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise OmostError(
                f"the model folder {name} has no config.json",
                parameter="llm",
                value=name,
                allowed="a transformers model folder (config.json, weights, tokenizer)",
            )
        return ModelSource(str(path.resolve()), local=True)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise OmostError(
            f"unknown LLM {name!r}: not a known model, a model folder or a hub id (owner/name)",
            parameter="llm",
            value=name,
            allowed=[m.repo for m in KNOWN_MODELS] + ["a model folder", "owner/name"],
        )
    return ModelSource(name, local=False)


def estimated_parameters(config: Any) -> float:
    """A rough parameter count from a decoder config: 12·L·h² for the blocks plus the embeddings."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    return float(12 * layers * hidden * hidden + 2 * vocab * hidden)


@dataclass
class LoadedLLM:
    """A model and its tokenizer, loaded once and shared by every request."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    quantization: Quantization
    known: KnownModel | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def move(self, device: torch.device) -> None:
        """Move the weights and every bitsandbytes quantisation tensor (``memory.move_module``):
        ``Module.to`` would leave an 8-bit model's int8 weights (``CB``/``SCB``) on the GPU, and
        transformers' own ``.to`` refuses quantised models on some versions."""
        from omost_engine.memory import move_module

        move_module(self.model, device)


def _compute_dtype(device: torch.device, parameters: float = 0.0) -> torch.dtype:
    """bf16 on a GPU that has it, else fp16; on the CPU bf16 for a large model where the CPU supports
    it (half the memory of fp32), fp32 otherwise."""
    import torch

    from omost_engine.memory import cpu_supports_bf16

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and parameters >= CPU_BF16_MIN_PARAMETERS and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``, ``"fp16"``/``"float16"``, ``"fp32"``/``"float32"`` -> a torch dtype; None or
    ``"auto"`` -> None (the loader decides); OmostError for anything else."""
    import torch

    if name is None or name == "auto":
        return None
    key = DTYPES.get(str(name).strip().lower())
    if key is None:
        raise OmostError(
            f"unknown dtype {name!r}",
            parameter="dtype",
            value=str(name),
            allowed=["auto", "bf16", "fp16", "fp32"],
        )
    dtype: torch.dtype = getattr(torch, key)
    return dtype


def _rope_fixed(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict with the pre-mid-2024 Phi-3 rope scaling ``{"type": "su"}`` rewritten as
    ``longrope`` with the keys transformers 5 checks before renaming it itself (it raised KeyError)."""
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if not isinstance(rope, dict) or "su" not in (rope.get("type"), rope.get("rope_type")):
            continue
        fixed = {k: v for k, v in rope.items() if k != "type"}
        fixed["rope_type"] = "longrope"
        original = config.get("original_max_position_embeddings") or rope.get(
            "original_max_position_embeddings"
        )
        if original:
            fixed["original_max_position_embeddings"] = original
        config = {**config, key: fixed}
    return config


def _load_config(location: str, common: dict[str, Any]) -> Any:
    """The model's config, read as a dict and repaired (``_rope_fixed``) before transformers checks it."""
    from transformers import AutoConfig, PretrainedConfig

    data, _ = PretrainedConfig.get_config_dict(location, **common)
    fixed = _rope_fixed(data)
    if fixed is data:
        return AutoConfig.from_pretrained(location, **common)
    log.info("%s: rope scaling 'su' read as 'longrope'", location)
    model_type = fixed.get("model_type")
    if not model_type:
        raise ValueError("config.json has no model_type")
    return AutoConfig.for_model(
        **{k: v for k, v in fixed.items() if k != "model_type"}, model_type=model_type
    )


def _cause(exc: BaseException) -> str:
    """One line naming what went wrong in a library error (its first line, its type if it has none)."""
    text = str(exc).strip().strip('"').splitlines()
    first = " ".join(text[0].split()) if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    if isinstance(exc, OSError | ValueError) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _quantization_of(config: Any) -> Quantization:
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return "none"
    data = quant if isinstance(quant, dict) else quant.to_dict()
    if data.get("load_in_4bit"):
        return "4bit"
    if data.get("load_in_8bit"):
        return "8bit"
    return "none"


class LLMLoader:
    """Loads LLMs on demand and keeps them for reuse (by default only the latest, to spare memory).

    The ModelManager (if given) decides the device; the backend built on the model registers it there
    as ``"llm"``, so the renderer can send it to the CPU and ``manager.load("llm")`` brings it back.
    """

    def __init__(
        self,
        *,
        manager: ModelManager | None = None,
        allow_cpu: bool = False,
        keep_loaded: int = 1,
        cache_dir: str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        """``dtype`` forces the compute dtype (``"bf16"``, ``"fp32"``, a torch dtype); None picks it."""
        self.dtype = parse_dtype(dtype) if isinstance(dtype, str) or dtype is None else dtype
        self.manager = manager
        self.allow_cpu = allow_cpu
        self.keep_loaded = max(1, keep_loaded)
        self.cache_dir = cache_dir
        self._loaded: dict[str, LoadedLLM] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str | None = None) -> LoadedLLM:
        source = resolve_model(name)
        with self._lock:
            llm = self._loaded.get(source.name)
            if llm is None:
                while len(self._loaded) >= self.keep_loaded:
                    self._unload(next(iter(self._loaded)))
                llm = self._load(source)
                self._loaded[source.name] = llm
            return llm

    def _unload(self, name: str) -> None:
        llm = self._loaded.pop(name)
        del llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _device(self) -> torch.device:
        import torch

        if self.manager is not None:
            return self.manager.device
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def _check_fits(self, source: ModelSource, config: Any, device: torch.device) -> None:
        if device.type != "cpu" or self.allow_cpu:
            return
        parameters = source.known.parameters * 1e9 if source.known else estimated_parameters(config)
        if parameters > CPU_PARAMETER_LIMIT:
            raise OmostError(
                f"{source.name} has about {parameters / 1e9:.1f}B parameters and there is no GPU here; "
                "it would take many minutes per reply on the CPU. Use a GPU, an --llm-endpoint, "
                "or force it with allow_cpu (--allow-cpu)",
                parameter="llm",
                value=source.name,
                allowed="a GPU, a remote endpoint, or allow_cpu",
            )

    def _load(self, source: ModelSource) -> LoadedLLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self._device()
        if source.known is not None:  # refuse before any download
            self._check_fits(source, None, device)
        common: dict[str, Any] = {"cache_dir": self.cache_dir} if self.cache_dir and not source.local else {}
        try:
            config = _load_config(source.location, common)
            self._check_fits(source, config, device)
            parameters = source.known.parameters * 1e9 if source.known else estimated_parameters(config)
            dtype = self.dtype or _compute_dtype(device, parameters)
            log.info("loading LLM %s (%s, %s) on %s", source.name, _quantization_of(config), dtype, device)
            tokenizer = AutoTokenizer.from_pretrained(source.location, config=config, **common)
            model = AutoModelForCausalLM.from_pretrained(
                source.location,
                config=config,
                dtype=dtype,
                device_map={"": str(device)},
                **common,
            )
        except OmostError:
            raise
        except Exception as exc:  # missing files, no network, an unsupported architecture, a config
            # the library cannot read (KeyError, TypeError...): one clear line, never a traceback
            raise OmostError(
                f"cannot load the LLM {source.name}: {_cache_hint(source, exc) or _cause(exc)}",
                parameter="llm",
                value=source.name,
                allowed="a downloadable hub id or a local model folder",
            ) from exc
        model.eval()
        return LoadedLLM(
            name=source.name,
            model=model,
            tokenizer=tokenizer,
            quantization=_quantization_of(config),
            known=source.known,
        )


def hub_offline() -> bool:
    import os

    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _cache_hint(source: ModelSource, exc: BaseException) -> str:
    """For a hub id that is not downloaded while the hub is off: how to get it."""
    if source.local or not hub_offline() or not isinstance(exc, OSError):
        return ""
    return (
        f"it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; download it first with "
        f"`hf download {source.location}` where the hub is reachable, or unset HF_HUB_OFFLINE"
    )
