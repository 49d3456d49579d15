"""Which models sit on the accelerator: only the current stage's (offload) or all of them (resident).

The 4-bit LLM and SDXL in fp16 fit an 8 GB card only if they take turns, as the original Omost
app does; on a large card keeping everything resident saves the transfers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

MemoryMode = Literal["offload", "resident"]


@dataclass
class _Entry:
    move: Callable[[torch.device], None]
    on_device: bool = False


def _quant_state_tensors(owner: object, prefix: str) -> Iterator[tuple[str, object, str, torch.Tensor]]:
    """(name, holder, attribute, tensor) for the tensors bitsandbytes keeps beside a weight: an
    8-bit ``Int8Params``' ``CB``/``SCB``, a 4-bit ``Params4bit``'s ``quant_state`` (absmax, code and
    its nested state)."""
    for attribute, value in list(vars(owner).items()):
        if attribute.startswith("_") or attribute in ("module", "data"):
            continue
        if isinstance(value, torch.Tensor):
            yield f"{prefix}.{attribute}", owner, attribute, value
        elif type(value).__name__ == "QuantState":
            yield from _quant_state_tensors(value, f"{prefix}.{attribute}")


def module_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a module holds: parameters, buffers, and the quantisation state bitsandbytes
    keeps outside them (on the weights, and the ``state`` of ``Linear8bitLt``: ``CB``, ``SCB``, ...)."""
    for name, sub in module.named_modules():
        for pname, param in sub.named_parameters(recurse=False):
            yield f"{name}.{pname}", param
            for qname, _, _, tensor in _quant_state_tensors(param, f"{name}.{pname}"):
                yield qname, tensor
        for bname, buffer in sub.named_buffers(recurse=False):
            yield f"{name}.{bname}", buffer
        for attribute, holder in _module_quant_states(sub):
            for qname, _, _, tensor in _quant_state_tensors(holder, f"{name}.{attribute}"):
                yield qname, tensor


def move_module(module: torch.nn.Module, device: torch.device | str) -> None:
    """Move every tensor of ``module`` to ``device``, bitsandbytes quantisation state included.

    ``nn.Module.to`` moves parameters and buffers but not the int8 weights an 8-bit layer keeps in
    ``weight.CB``/``SCB`` and ``state.CB``/``SCB`` (they stayed on the GPU while SDXL loaded), and
    bitsandbytes' own ``.to`` is skipped by it. Here each tensor is moved in place (a parameter
    keeps its class and attributes), and a quant-state tensor that shares a weight's storage is
    pointed at the moved weight, so nothing is copied twice.
    """
    device = torch.device(device)
    # id of an old tensor -> (the old tensor, kept alive so its id is not reused; its moved copy)
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def to(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device == device:
            return tensor
        if id(tensor) not in moved:
            moved[id(tensor)] = (tensor, tensor.to(device))
        return moved[id(tensor)][1]

    new_params: dict[int, torch.nn.Parameter] = {}  # tied weights stay tied
    with torch.no_grad():
        for sub in module.modules():
            for pname, param in list(sub._parameters.items()):
                if param is None:
                    continue
                if id(param) not in new_params:
                    new_params[id(param)] = _moved_parameter(param, to, moved)
                sub._parameters[pname] = new_params[id(param)]
            for bname, buffer in list(sub._buffers.items()):
                if buffer is not None:
                    sub._buffers[bname] = to(buffer)
            for _, state in _module_quant_states(sub):
                for _, holder, attribute, tensor in list(_quant_state_tensors(state, "")):
                    setattr(holder, attribute, to(tensor))


def _moved_parameter(
    param: torch.nn.Parameter,
    to: Callable[[torch.Tensor], torch.Tensor],
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> torch.nn.Parameter:
    """The same kind of parameter (Int8Params, Params4bit, ...) with its data and quant state moved."""
    data = to(param.data)
    if data is param.data:
        new = param
    else:
        new = torch.Tensor._make_subclass(type(param), data, param.requires_grad)
        new.__dict__.update(param.__dict__)
    for _, holder, attribute, tensor in list(_quant_state_tensors(new, "")):
        if tensor.device != data.device and _same_storage(tensor, param.data):
            moved[id(tensor)] = (tensor, data)  # e.g. Int8Params.CB is the int8 weight itself
        # A QuantState is shared with the old parameter and moved in place, as Params4bit.to does.
        setattr(holder, attribute, to(tensor))
    return new


def _module_quant_states(module: torch.nn.Module) -> list[tuple[str, object]]:
    """bitsandbytes state kept on a layer: ``Linear8bitLt.state`` (a ``MatmulLtState`` holding CB/SCB
    after a forward) and a ``Linear4bit``'s own ``quant_state``."""
    return [
        (attribute, value)
        for attribute, value in vars(module).items()
        if type(value).__name__ in ("MatmulLtState", "QuantState")
    ]


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.device.type != "meta" and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.dtype == b.dtype
    )


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (oneDNN's check: AVX-512 BF16, AMX or similar)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
        self.register(name, lambda device: move_module(module, device), on_device=on_device)

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
