"""``Renderer``: the ``Engine.render`` half of the engine, with models loaded once and reused."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Protocol

import torch
from PIL import Image

from omost_engine.conditions import Condition
from omost_engine.engine import RenderResult
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.memory import MemoryMode, ModelManager
from omost_engine.params import RenderParams
from omost_engine.preview import masks_image
from omost_engine.progress import CancelToken, LLMProgress, ProgressCallback, RenderProgress
from omost_engine.render.loading import DEFAULT_MODEL, dtypes_for, load_components, parse_dtype
from omost_engine.render.pipeline import HR_MIN_SCALE, RegionalPipeline
from omost_engine.render.prompt_encoding import PooledKind
from omost_engine.variations import BatchStrategy, check_count, check_strategy, grid_image, variation_seeds

# Free accelerator memory a batched variation needs per output pixel per image (SDXL fp16 with CFG:
# about 2 GB of activations per megapixel image); below it ``auto`` renders one image after another.
BATCH_BYTES_PER_PIXEL = 2048


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
        batch_bytes: int = BATCH_BYTES_PER_PIXEL,
    ) -> None:
        """``dtype`` forces the models' dtype (``"bf16"``, ``"fp32"``, ...); by default it is chosen per
        device and model size (``loading.dtypes_for``)."""
        self.dtype = parse_dtype(dtype) if dtype is None or isinstance(dtype, str) else dtype
        self.batch_bytes = batch_bytes
        self.memory = memory or ModelManager(device=device, mode=memory_mode)
        self.default_model = default_model
        self.single_file_config = single_file_config
        self._pipeline_options: dict[str, Any] = dict(
            pooled=pooled, keep_suffixes=keep_suffixes, max_batch=max_batch, preview=preview
        )
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
        count: int = 1,
        base: Image.Image | None = None,
        strategy: BatchStrategy = "auto",
    ) -> RenderResult:
        """``count`` images of the layout (seeds ``variation_seeds(params.seed, count)``; a 2x2 grid as
        ``image`` when more than one). ``strategy``: ``batched`` samples them together (one UNet call per
        step), ``sequential`` one after another, ``auto`` batches where memory allows (always on a CPU;
        on CUDA when the free memory holds the estimate, ``batch_bytes``) and falls back to sequential
        when a batched run runs out of memory. ``base`` (an upscale): the image this layout and seed made
        without the high-res pass; only the high-res pass runs (``params.hr_scale`` > 1.05)."""
        params = params.validated()
        count = check_count(count)
        strategy = check_strategy(strategy)
        if base is not None and count != 1:
            raise OmostError(
                "an upscale is of one image; allowed: count 1 with an image to upscale",
                parameter="count",
                value=count,
                allowed="1",
            )
        conditions = list(getattr(layout, "conditions", None) or [])
        if not conditions:
            raise OmostError(
                "the layout has no conditions: it needs at least the global description", parameter="layout"
            )
        seeds = variation_seeds(params.seed, count)
        started = time.perf_counter()
        with self._lock:
            if cancel is not None:
                cancel.raise_if_cancelled()
            pipeline = self.pipeline(model)
            sketch = as_layout(layout).sketch() if params.initial_latent_denoise is not None else None
            bases = None if base is None else [base]
            batched = count > 1 and self._batch_fits(params, count, strategy)
            images: list[Image.Image] | None = None
            if batched:
                try:
                    images = pipeline.render_batch(
                        conditions, params, seeds, sketch=sketch, on_progress=on_progress, cancel=cancel
                    )
                except torch.cuda.OutOfMemoryError:
                    if strategy == "batched":
                        raise
                    batched = False
                    if self.memory.device.type == "cuda":
                        torch.cuda.empty_cache()
            if images is None:
                images = []
                for i, seed in enumerate(seeds):
                    images += pipeline.render_batch(
                        conditions,
                        params,
                        [seed],
                        sketch=sketch,
                        base=bases,
                        on_progress=_offset_progress(on_progress, i, count),
                        cancel=cancel,
                    )
        image = images[0] if count == 1 else grid_image(images)
        return RenderResult(
            image=image,
            masks=masks_image(as_layout(layout), images[0].size),
            model=model or self.default_model,
            seconds=time.perf_counter() - started,
            params=params,
            images=tuple(images),
            seeds=seeds,
            batched=batched,
        )

    def _batch_fits(self, params: RenderParams, count: int, strategy: BatchStrategy) -> bool:
        if strategy != "auto":
            return strategy == "batched"
        device = self.memory.device
        if device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(device)
        width, height = params.width, params.height
        if params.hr_scale > HR_MIN_SCALE:
            width, height = round(width * params.hr_scale), round(height * params.hr_scale)
        return free >= self.batch_bytes * width * height * count


def _offset_progress(on_progress: ProgressCallback | None, index: int, count: int) -> ProgressCallback | None:
    """Progress of image ``index`` of ``count`` rendered one after another, counted over the whole job."""
    if on_progress is None or count == 1:
        return on_progress

    def report(progress: LLMProgress | RenderProgress) -> None:
        if isinstance(progress, RenderProgress):
            per_image = progress.steps_in_all
            progress = dataclasses.replace(
                progress,
                run_step=index * per_image + progress.steps_done,
                run_total=count * per_image,
                images=count,
            )
        on_progress(progress)

    return report
