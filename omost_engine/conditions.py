"""A regional condition on the 90x90 canvas grid: the unit the canvas produces and the renderer consumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GRID = 90


@dataclass(frozen=True)
class Condition:
    """One entry of the original ``bag_of_conditions`` plus its colour (ComfyUI_omost's JSON element).

    ``rect`` is ``(top, bottom, left, right)`` on the 90x90 grid, end-exclusive (a numpy slice).
    The global condition is always first and covers the whole grid.
    """

    rect: tuple[int, int, int, int]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    color: tuple[int, int, int]

    def mask(self) -> np.ndarray:
        """A float32 (90, 90) mask: 1.0 inside the rect, 0.0 elsewhere."""
        top, bottom, left, right = self.rect
        m = np.zeros((GRID, GRID), dtype=np.float32)
        m[top:bottom, left:right] = 1.0
        return m

    @property
    def area(self) -> int:
        top, bottom, left, right = self.rect
        return max(0, bottom - top) * max(0, right - left)

    def to_json(self) -> dict[str, Any]:
        return {
            "rect": list(self.rect),
            "prefixes": list(self.prefixes),
            "suffixes": list(self.suffixes),
            "color": list(self.color),
        }
