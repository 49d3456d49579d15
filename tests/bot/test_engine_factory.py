"""The real engine's wrapper offers every parameter of the ``Engine`` protocol the job runner may pass."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from bot.engine_factory import CombinedEngine
from omost_engine.engine import Engine


def _parameters(method: Callable[..., object]) -> list[tuple[str, object, object]]:
    signature = inspect.signature(method)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


@pytest.mark.parametrize("name", ["chat", "render"])
def test_combined_engine_takes_the_protocols_parameters(name: str) -> None:
    # render lacked count and base: a variation through the real engine raised TypeError.
    assert _parameters(getattr(CombinedEngine, name)) == _parameters(getattr(Engine, name))
