"""The regional SDXL pipeline: encode conditions, sample with DPM++ 2M Karras, decode, optional HR fix.

Built from loaded components (``loading.py``); the stages take turns on the accelerator through
``ModelManager`` (text encoders, then VAE if the sketch is used, then UNet, then VAE). Noise comes
from a seeded CPU generator, so a seed gives the same image on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omost_engine.conditions import GRID, Condition
from omost_engine.errors import OmostError
from omost_engine.memory import ModelManager
from omost_engine.params import RenderParams
from omost_engine.progress import CancelToken, ProgressCallback, RenderProgress
from omost_engine.render.area import area_weights, blend
from omost_engine.render.attention import RegionalAttention
from omost_engine.render.loading import SDXLComponents
from omost_engine.render.prompt_encoding import CHUNK_TOKENS, EncodedPrompt, PooledKind, PromptEncoder
from omost_engine.render.sampler import (
    Denoiser,
    karras_sigmas,
    sample_dpmpp_2m,
    timestep_for,
    training_sigmas,
)

HR_MIN_SCALE = 1.05  # the original's threshold: smaller scales skip the HR fix
SKETCH_BLUR = 81  # box blur of the 90x90 colour sketch (reflect-padded by 40) before VAE encoding
# A cheap linear map from SDXL latents to RGB in [-1, 1] for step previews (rows: latent channels).
LATENT_RGB = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latent_preview(latent: torch.Tensor) -> Image.Image:
    """A small RGB picture of a (1, 4, h, w) latent, one pixel per latent cell."""
    rgb = torch.einsum("chw,cr->hwr", latent[0].float().cpu(), LATENT_RGB) + LATENT_RGB_BIAS
    return Image.fromarray(((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy())


def blurred_sketch(sketch: np.ndarray, width: int, height: int) -> torch.Tensor:
    """The original's initial-latent image: sketch in [-1, 1], reflect pad, 81x81 box blur, nearest resize."""
    if sketch.shape != (GRID, GRID, 3):
        raise OmostError(f"the colour sketch must be {GRID}x{GRID}x3, not {sketch.shape}", parameter="sketch")
    pixels = torch.from_numpy(np.ascontiguousarray(sketch)).float().permute(2, 0, 1)[None] / 127.5 - 1
    pad = SKETCH_BLUR // 2
    blurred = F.avg_pool2d(F.pad(pixels, (pad, pad, pad, pad), mode="reflect"), SKETCH_BLUR, stride=1)
    return F.interpolate(blurred, size=(height, width), mode="nearest")


@dataclass(frozen=True)
class _Prompts:
    positives: list[EncodedPrompt]
    negative: EncodedPrompt
    masks: torch.Tensor  # (R, 90, 90), global first


class RegionalPipeline:
    """Renders conditions with one SDXL model. Not thread-safe: the renderer runs one render at a time."""

    def __init__(
        self,
        components: SDXLComponents,
        *,
        memory: ModelManager,
        pooled: PooledKind = "projected",
        keep_suffixes: bool = True,
        max_batch: int = 8,
        preview: bool = False,
    ) -> None:
        self.components = components
        self.memory = memory
        self.device = memory.device
        self.max_batch = max_batch
        self.preview = preview
        key = components.model
        self.stage_names = {"text": f"sdxl:{key}:text", "unet": f"sdxl:{key}:unet", "vae": f"sdxl:{key}:vae"}
        text_encoders = (components.text_encoder, components.text_encoder_2)

        def move_text(device: torch.device) -> None:
            for module in text_encoders:
                module.to(device)

        memory.register(
            self.stage_names["text"],
            move_text,
            on_device=components.text_encoder.device.type == self.device.type,
        )
        memory.register_module(self.stage_names["unet"], components.unet)
        memory.register_module(self.stage_names["vae"], components.vae)
        self.encoder = PromptEncoder(
            tokenizer=components.tokenizer,
            tokenizer_2=components.tokenizer_2,
            text_encoder=components.text_encoder,
            text_encoder_2=components.text_encoder_2,
            pooled=pooled,
            keep_suffixes=keep_suffixes,
        )
        self.attention = RegionalAttention()
        self.attention.install(components.unet)
        self.train_sigmas = training_sigmas()
        vae_config = components.vae.config
        self.vae_scale = float(vae_config.scaling_factor)
        self.vae_shift = float(getattr(vae_config, "shift_factor", None) or 0.0)

    # -- stages ------------------------------------------------------------------------------------

    def encode(self, conditions: Sequence[Condition], params: RenderParams) -> _Prompts:
        self.memory.load(self.stage_names["text"])
        extra = (params.positive.strip(),) if params.positive.strip() else ()
        groups = [self.encoder.chunks(c.prefixes, (*c.suffixes, *extra)) for c in conditions]
        encoded = self.encoder.encode([*groups, [self.encoder.negative_chunk(params.negative)]])
        masks = torch.stack([torch.from_numpy(c.mask()) for c in conditions])
        return _Prompts(positives=encoded[:-1], negative=encoded[-1], masks=masks)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) pixels in [-1, 1] -> scaled latent (float32)."""
        self.memory.load(self.stage_names["vae"])
        vae = self.components.vae
        latent: torch.Tensor = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()
        return (latent.float() - self.vae_shift) * self.vae_scale

    def decode(self, latent: torch.Tensor) -> Image.Image:
        self.memory.load(self.stage_names["vae"])
        vae = self.components.vae
        pixels = vae.decode((latent / self.vae_scale + self.vae_shift).to(self.device, vae.dtype)).sample
        array = (pixels[0].permute(1, 2, 0).float() * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
        return Image.fromarray(array.cpu().numpy())

    def _unet(
        self,
        x_rows: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        pooled: torch.Tensor,
        time_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One UNet call on ``x_rows`` (one latent per context row)."""
        unet = self.components.unet
        x_in = (x_rows / (sigma**2 + 1) ** 0.5).to(unet.dtype)
        timestep = timestep_for(sigma, self.train_sigmas).to(self.device)
        out: torch.Tensor = unet(
            x_in,
            timestep,
            encoder_hidden_states=context,
            encoder_attention_mask=attention_mask,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        return out.float()

    def _omost_denoiser(
        self, prompts: _Prompts, params: RenderParams, time_ids: torch.Tensor, images: int = 1
    ) -> Denoiser:
        """CFG over ``images`` latents in one UNet call: rows [positive x images, negative x images]."""
        dtype = self.components.unet.dtype
        positive = torch.cat([p.cond for p in prompts.positives], dim=1)
        negative = F.pad(prompts.negative.cond, (0, 0, 0, positive.shape[1] - CHUNK_TOKENS))
        context = torch.cat([positive.expand(images, -1, -1), negative.expand(images, -1, -1)])
        context = context.to(self.device, dtype)
        pooled = torch.cat(
            [prompts.positives[0].pooled.expand(images, -1), prompts.negative.pooled.expand(images, -1)]
        )
        pooled = pooled.to(self.device, dtype)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            eps_pos, eps_neg = self._unet(torch.cat([x, x]), sigma, context, pooled, time_ids).chunk(2)
            return x - (eps_neg + params.cfg * (eps_pos - eps_neg)) * sigma

        return denoise

    def _area_denoiser(
        self,
        prompts: _Prompts,
        params: RenderParams,
        time_ids: torch.Tensor,
        latent_hw: tuple[int, int],
        images: int = 1,
    ) -> Denoiser:
        """One row per (condition, image), condition-major, batched ``max_batch`` rows per UNet call."""
        dtype = self.components.unet.dtype
        rows = [*prompts.positives, prompts.negative]
        longest = max(p.cond.shape[1] for p in rows)
        context = torch.cat([F.pad(p.cond, (0, 0, 0, longest - p.cond.shape[1])) for p in rows])
        context = context.repeat_interleave(images, dim=0).to(self.device, dtype)
        pooled = torch.cat([p.pooled for p in rows]).repeat_interleave(images, dim=0).to(self.device, dtype)
        lengths = torch.tensor([p.cond.shape[1] for p in rows]).repeat_interleave(images)
        valid = (torch.arange(longest)[None] < lengths[:, None]).to(self.device, dtype)
        same_length = bool((lengths == longest).all())
        weights = area_weights(
            prompts.masks,
            overlap=params.overlap,
            global_strength=params.global_strength,
            region_strength=params.region_strength,
            latent_hw=latent_hw,
        ).to(self.device)
        total = len(context)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            x_rows = x.repeat(len(rows), 1, 1, 1)
            eps = torch.cat(
                [
                    self._unet(
                        x_rows[i : i + self.max_batch],
                        sigma,
                        context[i : i + self.max_batch],
                        pooled[i : i + self.max_batch],
                        time_ids[: len(context[i : i + self.max_batch])],
                        None if same_length else valid[i : i + self.max_batch],
                    )
                    for i in range(0, total, self.max_batch)
                ]
            ).reshape(len(rows), images, *x.shape[1:])
            eps_pos = torch.stack([blend(eps[:-1, b], weights) for b in range(images)])
            eps_neg = eps[-1]
            return x - (eps_neg + params.cfg * (eps_pos - eps_neg)) * sigma

        return denoise

    def sample(
        self,
        prompts: _Prompts,
        params: RenderParams,
        *,
        size: tuple[int, int],
        steps: int,
        strength: float,
        start: torch.Tensor | None,
        generators: Sequence[torch.Generator],
        stage: str,
        on_progress: ProgressCallback | None,
        cancel: CancelToken | None,
        steps_before: int = 0,
        run_total: int | None = None,
    ) -> torch.Tensor:
        """One sampling pass of ``len(generators)`` images at once (one seeded generator per image, so
        image i is the image a render of seed i alone makes); progress counts its steps after
        ``steps_before`` of the ``run_total`` in the render (the base pass's steps before the high-res
        pass's)."""
        width, height = size
        latent_hw = (height // 8, width // 8)
        images = len(generators)
        self.memory.load(self.stage_names["unet"])
        sigmas = karras_sigmas(steps, strength=strength, train=self.train_sigmas).to(self.device)
        noise = torch.cat(
            [torch.randn((1, 4, *latent_hw), generator=g, dtype=torch.float32) for g in generators]
        )
        x = noise.to(self.device) * sigmas[0] + (start if start is not None else 0)
        rows = (len(prompts.positives) + 1 if params.method == "area" else 2) * images
        time_ids = torch.tensor(
            [[height, width, 0, 0, height, width]] * rows,
            dtype=self.components.unet.dtype,
            device=self.device,
        )

        def on_step(step: int, total: int, denoised: torch.Tensor) -> None:
            if on_progress is not None:
                # A preview costs a copy to the CPU every step: made only when asked for.
                preview = latent_preview(denoised[:1]) if self.preview else None
                on_progress(
                    RenderProgress(
                        step=step,
                        total=total,
                        stage=stage,
                        preview=preview,
                        run_step=steps_before + step,
                        run_total=run_total if run_total is not None else total,
                        images=images,
                    )
                )

        if params.method == "area":
            denoise = self._area_denoiser(prompts, params, time_ids, latent_hw, images)
            return sample_dpmpp_2m(denoise, x, sigmas, on_step=on_step, cancel=cancel)
        masks = torch.cat([prompts.masks, torch.ones(1, GRID, GRID)])  # the last one: the negative prompt's
        token_region = self._token_regions(prompts).repeat_interleave(
            images, dim=0
        )  # same masks, every image
        if not self.attention.installed_on(self.components.unet):  # another pipeline shared these components
            self.attention.install(self.components.unet)
        with self.attention.regions(masks.to(self.device), token_region.to(self.device), latent_hw):
            denoise = self._omost_denoiser(prompts, params, time_ids, images)
            return sample_dpmpp_2m(denoise, x, sigmas, on_step=on_step, cancel=cancel)

    @staticmethod
    def _token_regions(prompts: _Prompts) -> torch.Tensor:
        """(2, T): region index of every positive token; the negative row's 77 tokens, then hidden padding."""
        positive = [i for i, p in enumerate(prompts.positives) for _ in range(p.cond.shape[1])]
        negative = [len(prompts.masks)] * CHUNK_TOKENS + [-1] * (len(positive) - CHUNK_TOKENS)
        return torch.tensor([positive, negative], dtype=torch.long)

    # -- the whole render ----------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        conditions: Sequence[Condition],
        params: RenderParams,
        *,
        sketch: np.ndarray | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> Image.Image:
        """One image of ``params.seed``."""
        return self.render_batch(
            conditions, params, [params.seed], sketch=sketch, on_progress=on_progress, cancel=cancel
        )[0]

    @torch.inference_mode()
    def render_batch(
        self,
        conditions: Sequence[Condition],
        params: RenderParams,
        seeds: Sequence[int],
        *,
        sketch: np.ndarray | None = None,
        base: Sequence[Image.Image] | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Image.Image]:
        """One image per seed, all sampled together (batched UNet calls, the same regions for every image).

        Image i equals ``self(conditions, params.replace(seed=seeds[i]))``. ``base`` (an upscale) gives the
        base pass's images, one per seed, so only the high-res pass runs; the generators are advanced
        past the base pass's noise, so the result equals a full render with ``params.hr_scale``.
        """
        params = params.validated()
        conditions = list(conditions)
        if not conditions:
            raise OmostError(
                "the layout has no conditions: it needs at least the global description", parameter="layout"
            )
        if conditions[0].rect != (0, GRID, 0, GRID):
            raise OmostError(
                f"the first condition covers {list(conditions[0].rect)}, not the whole grid: the renderer needs "
                f"the global description first, with rect [0, {GRID}, 0, {GRID}]",
                parameter="conditions[0].rect",
                value=list(conditions[0].rect),
                allowed=f"[0, {GRID}, 0, {GRID}]",
            )
        if not seeds:
            raise OmostError("no seeds to render; allowed: at least one seed", parameter="seeds")
        size = (params.width, params.height)
        hires = params.hr_scale > HR_MIN_SCALE
        if base is not None:
            if not hires:
                raise OmostError(
                    f"an upscale needs hr_scale above {HR_MIN_SCALE:g}, got {params.hr_scale:g}; "
                    f"allowed: {HR_MIN_SCALE:g} < hr_scale <= 2",
                    parameter="hr_scale",
                    value=params.hr_scale,
                    allowed=f"{HR_MIN_SCALE:g}..2",
                )
            if len(base) != len(seeds) or any(image.size != size for image in base):
                raise OmostError(
                    f"the images to upscale must be {len(seeds)} of {size[0]}x{size[1]} (the layout's "
                    f"size), got {[image.size for image in base]}",
                    parameter="image",
                    allowed=f"{size[0]}x{size[1]}",
                )
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        prompts = self.encode(conditions, params)
        run_total = (0 if base is not None else params.steps) + (params.hr_steps if hires else 0)
        if base is not None:
            for generator in generators:  # the base pass's noise, drawn and dropped: the same generator state
                torch.randn(
                    (1, 4, params.height // 8, params.width // 8), generator=generator, dtype=torch.float32
                )
            images = [image.convert("RGB") for image in base]
        else:
            start, strength = None, 1.0
            if params.initial_latent_denoise is not None and sketch is not None:
                start = self.encode_image(blurred_sketch(sketch, *size))
                strength = params.initial_latent_denoise
            latent = self.sample(
                prompts,
                params,
                size=size,
                steps=params.steps,
                strength=strength,
                start=start,
                generators=generators,
                stage="render",
                on_progress=on_progress,
                cancel=cancel,
                run_total=run_total,
            )
            if cancel is not None:
                cancel.raise_if_cancelled()
            images = [self.decode(latent[i : i + 1]) for i in range(len(seeds))]
        if hires:
            size = (
                round(params.width * params.hr_scale / 64) * 64,
                round(params.height * params.hr_scale / 64) * 64,
            )
            starts = []
            for image in images:
                resized = image.resize(size, Image.Resampling.LANCZOS)
                pixels = torch.from_numpy(np.array(resized)).float().permute(2, 0, 1)[None] / 127.5 - 1
                starts.append(self.encode_image(pixels))
            latent = self.sample(
                prompts,
                params,
                size=size,
                steps=params.hr_steps,
                strength=params.hr_denoise,
                start=torch.cat(starts),
                generators=generators,
                stage="hires",
                on_progress=on_progress,
                cancel=cancel,
                steps_before=run_total - params.hr_steps,
                run_total=run_total,
            )
            if cancel is not None:
                cancel.raise_if_cancelled()
            images = [self.decode(latent[i : i + 1]) for i in range(len(seeds))]
        return images
