"""Golden cases of the original Omost canvas (tests/fixtures/goldens) for the canvas-engine tests.

Shared as fixtures (not imports): several test folders have a conftest.py of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GOLDENS = Path(__file__).resolve().parents[1] / "fixtures" / "goldens"


def _path(number: str) -> Path:
    (path,) = GOLDENS.glob(f"{number}_*.json")
    return path


@pytest.fixture(scope="session")
def golden() -> Callable[[str], dict[str, Any]]:
    """``golden("01")``: the JSON of golden case 01."""
    return lambda number: json.loads(_path(number).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def golden_program() -> Callable[[str], str]:
    """``golden_program("01")``: the canvas program (.py) of golden case 01."""
    return lambda number: _path(number).with_suffix(".py").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def decode_rle() -> Callable[[dict[str, Any]], np.ndarray]:
    """A golden ``initial_latent`` (palette + per-row runs) back to a (90, 90, 3) uint8 image."""

    def decode(initial_latent: dict[str, Any]) -> np.ndarray:
        palette = initial_latent["palette"]
        rows = [[palette[i] for i, n in row for _ in range(n)] for row in initial_latent["rows_rle"]]
        return np.array(rows, dtype=np.uint8)

    return decode
