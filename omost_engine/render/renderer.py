"""``Renderer``: the ``Engine.render`` half of the engine, with models loaded once and reused."""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import torch

from omost_engine.conditions import Condition
from omost_engine.engine import RenderResult
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.memory import MemoryMode, ModelManager
from omost_engine.params import RenderParams
from omost_engine.preview import masks_image
from omost_engine.progress import CancelToken, ProgressCallback
from omost_engine.render.loading import DEFAULT_MODEL, dtypes_for, load_components, parse_dtype
from omost_engine.render.pipeline import RegionalPipeline
from omost_engine.render.prompt_encoding import PooledKind


class HasConditions(Protocol):
    conditions: list[Condition]


def as_layout(layout: HasConditions) -> Layout:
    """A ``Layout`` for anything with ``.conditions`` (the renderer accepts bare condition holders)."""
    return layout if isinstance(layout, Layout) else Layout(conditions=list(layout.conditions))


class Renderer:
    """Implements ``Engine.render``. Pipelines are cached by model id; one render runs at a time.

    ``preview=True`` puts a small picture of the current latent in every ``RenderProgress``; off by
    default, since nothing shows them and each costs a copy to the CPU per step.
    """

    def __init__(
        self,
        *,
        memory: ModelManager | None = None,
        device: torch.device | str | None = None,
        memory_mode: MemoryMode = "offload",
        default_model: str = DEFAULT_MODEL,
        single_file_config: str | None = None,
        pooled: PooledKind = "projected",
        keep_suffixes: bool = True,
        max_batch: int = 8,
        preview: bool = False,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        """``dtype`` forces the models' dtype (``"bf16"``, ``"fp32"``, ...); by default it is chosen per
        device and model size (``loading.dtypes_for``)."""
        self.dtype = parse_dtype(dtype) if dtype is None or isinstance(dtype, str) else dtype
        self.memory = memory or ModelManager(device=device, mode=memory_mode)
        self.default_model = default_model
        self.single_file_config = single_file_config
        self._pipeline_options: dict[str, Any] = dict(
            pooled=pooled, keep_suffixes=keep_suffixes, max_batch=max_batch, preview=preview)
        self._pipelines: dict[str, RegionalPipeline] = {}
        self._lock = threading.Lock()

    def pipeline(self, model: str | None = None) -> RegionalPipeline:
        """The pipeline of ``model`` (default model when None), loading it on first use."""
        name = model or self.default_model
        cached = self._pipelines.get(name)
        if cached is not None:
            return cached
        dtype, vae_dtype = dtypes_for(self.memory.device, name, self.dtype)
        components = load_components(name, dtype=dtype, vae_dtype=vae_dtype, config=self.single_file_config)
        pipeline = RegionalPipeline(components, memory=self.memory, **self._pipeline_options)
        self._pipelines[name] = pipeline
        return pipeline

    def render(
        self,
        layout: HasConditions,
        params: RenderParams,
        *,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> RenderResult:
        params = params.validated()
        conditions = list(getattr(layout, "conditions", None) or [])
        if not conditions:
            raise OmostError("the layout has no conditions: it needs at least the global description",
                             parameter="layout")
        started = time.perf_counter()
        with self._lock:
            if cancel is not None:
                cancel.raise_if_cancelled()
            pipeline = self.pipeline(model)
            sketch = as_layout(layout).sketch() if params.initial_latent_denoise is not None else None
            image = pipeline(conditions, params, sketch=sketch, on_progress=on_progress, cancel=cancel)
        return RenderResult(
            image=image, masks=masks_image(as_layout(layout), image.size), model=model or self.default_model,
            seconds=time.perf_counter() - started, params=params,
        )
