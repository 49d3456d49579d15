"""Which models sit on the accelerator: only the current stage's (offload) or all of them (resident).

The 4-bit LLM and SDXL in fp16 fit an 8 GB card only if they take turns, as the original Omost
app does; on a large card keeping everything resident saves the transfers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

MemoryMode = Literal["offload", "resident"]


@dataclass
class _Entry:
    move: Callable[[torch.device], None]
    on_device: bool = False


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class ModelManager:
    """Moves registered models between the accelerator and the CPU, one stage at a time.

    Models register a ``move(device)`` callable rather than the module itself, because some
    (bitsandbytes-quantised LLMs) need a special way of being moved.
    """

    def __init__(self, *, device: torch.device | str | None = None, mode: MemoryMode = "offload") -> None:
        if mode not in ("offload", "resident"):
            raise ValueError(f"memory mode must be offload or resident, not {mode!r}")
        self.device = torch.device(device) if device is not None else default_device()
        self.mode: MemoryMode = mode
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    @property
    def offloads(self) -> bool:
        """True when models really change places (offload mode on an accelerator)."""
        return self.mode == "offload" and self.device.type != "cpu"

    def register(self, name: str, move: Callable[[torch.device], None], *, on_device: bool = False) -> None:
        with self._lock:
            self._entries[name] = _Entry(move=move, on_device=on_device)

    def register_module(self, name: str, module: torch.nn.Module) -> None:
        on_device = any(p.device.type == self.device.type for p in module.parameters())
        self.register(name, lambda device: module.to(device), on_device=on_device)

    def on_device(self, name: str) -> bool:
        return self._entries[name].on_device

    def load(self, *names: str) -> None:
        """Make ``names`` resident on the device; in offload mode, send every other model to the CPU."""
        with self._lock:
            unknown = [n for n in names if n not in self._entries]
            if unknown:
                raise KeyError(f"unknown model(s): {', '.join(unknown)}")
            if self.device.type == "cpu":
                return
            if self.mode == "offload":
                for name, entry in self._entries.items():
                    if entry.on_device and name not in names:
                        entry.move(torch.device("cpu"))
                        entry.on_device = False
            for name in names:
                entry = self._entries[name]
                if not entry.on_device:
                    entry.move(self.device)
                    entry.on_device = True
            if self.offloads and self.device.type == "cuda":
                torch.cuda.empty_cache()

    def resident(self) -> list[str]:
        return [name for name, entry in self._entries.items() if entry.on_device]
