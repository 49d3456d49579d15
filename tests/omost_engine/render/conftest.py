"""Shared tiny SDXL for the renderer tests: built and saved once per session."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from omost_engine.render.loading import SDXLComponents, load_components
from omost_engine.testing.tiny_sdxl import TinySDXLPaths, save_tiny_sdxl


@pytest.fixture(scope="session", autouse=True)
def _private_config_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The shipped SDXL configs are written out once per cache folder: a private one, not ~/.cache."""
    os.environ.setdefault("OMOST_CACHE", str(tmp_path_factory.mktemp("omost-cache")))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> TinySDXLPaths:
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return save_tiny_sdxl(Path(tmp_path_factory.mktemp("tiny-sdxl")))


@pytest.fixture(scope="session")
def tiny_components(tiny_sdxl: TinySDXLPaths) -> SDXLComponents:
    return load_components(str(tiny_sdxl.folder))
