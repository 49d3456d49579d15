"""Tiny LLM folders and backends shared by the LLM tests (built once per test session)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omost_engine.testing.tiny_llm import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-llama-3")


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omost_engine.testing.tiny_llm import save_tiny_llm

    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "tiny-phi-3", "phi-3")


@pytest.fixture(scope="session")
def tiny_backend(tiny_llm_dir: Path):
    """A TransformersBackend on the tiny Llama-3-style model (shared: do not leave it cancelled)."""
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.transformers_backend import TransformersBackend

    return TransformersBackend(LLMLoader().get(str(tiny_llm_dir)))


@pytest.fixture(scope="session")
def golden_reply():
    """``golden_reply("01")``: the exact LLM reply of a golden case."""
    import json

    def read(prefix: str) -> str:
        (path,) = GOLDENS.glob(f"{prefix}_*.json")
        return json.loads(path.read_text())["bot_response"]

    return read
