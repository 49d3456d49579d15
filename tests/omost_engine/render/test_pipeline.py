"""The whole regional pipeline on the tiny SDXL: determinism, sizes, stages, progress, cancel, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from omost_engine.conditions import Condition
from omost_engine.engine import RenderResult
from omost_engine.errors import CancelledError, OmostError
from omost_engine.layout import Layout
from omost_engine.memory import ModelManager
from omost_engine.params import RenderParams
from omost_engine.progress import CancelToken, RenderProgress
from omost_engine.render.attention import RegionalAttnProcessor
from omost_engine.render.loading import load_components
from omost_engine.render.pipeline import RegionalPipeline, blurred_sketch
from omost_engine.render.renderer import Renderer
from omost_engine.testing.tiny_sdxl import TinySDXLPaths

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"
SMALL = RenderParams(width=256, height=256, steps=2)


def golden_conditions(name: str = "09_same_distance_ties") -> list[Condition]:
    bag = json.loads((GOLDENS / f"{name}.json").read_text())["process_output"]["bag_of_conditions"]
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]
    return [
        Condition(
            rect=tuple(c["mask"]["rect"]),
            prefixes=tuple(c["prefixes"]),
            suffixes=tuple(c["suffixes"]),
            color=colors[i % len(colors)],
        )
        for i, c in enumerate(bag)
    ]


class RecordingManager(ModelManager):
    """A real ModelManager that also records which stage was asked for, in order."""

    def __init__(self) -> None:
        super().__init__(device="cpu", mode="offload")
        self.calls: list[str] = []

    def load(self, *names: str) -> None:
        self.calls.extend(name.rsplit(":", 1)[-1] for name in names)
        super().load(*names)


@pytest.fixture(scope="module")
def renderer(tiny_sdxl: TinySDXLPaths) -> Renderer:
    return Renderer(default_model=str(tiny_sdxl.folder), device="cpu")


@pytest.fixture(scope="module")
def layout() -> Layout:
    return Layout(conditions=golden_conditions())  # global + 3 short regions: a small context


def pixels(result: RenderResult) -> np.ndarray:
    return np.asarray(result.image)


def test_same_seed_same_image_other_seed_other_image(renderer: Renderer, layout: Layout) -> None:
    first = renderer.render(layout, SMALL)
    again = renderer.render(layout, SMALL)
    other = renderer.render(layout, SMALL.replace(seed=7))
    assert first.image.size == (256, 256)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    assert pixels(first).std() > 1  # an image, not a blank
    assert first.masks.size == first.image.size
    assert first.params == SMALL and first.model == renderer.default_model and first.seconds > 0


def test_any_object_with_conditions_renders(renderer: Renderer, layout: Layout) -> None:
    from types import SimpleNamespace

    holder = SimpleNamespace(conditions=list(layout.conditions))
    params = SMALL.replace(steps=1, initial_latent_denoise=0.97)  # the sketch comes from the conditions too
    assert np.array_equal(pixels(renderer.render(holder, params)), pixels(renderer.render(layout, params)))


def test_methods_and_sizes(renderer: Renderer, layout: Layout) -> None:
    omost = renderer.render(layout, SMALL.replace(width=320, height=256))
    assert omost.image.size == (320, 256)
    odd = renderer.render(layout, SMALL.replace(width=264, height=256, steps=2))  # latent 33 wide: odd grids
    assert odd.image.size == (264, 256)
    area = renderer.render(layout, SMALL.replace(width=320, height=256, method="area"))
    assert area.image.size == (320, 256)
    assert not np.array_equal(pixels(omost), pixels(area))
    overlay = renderer.render(layout, SMALL.replace(width=320, height=256, method="area", overlap="overlay"))
    assert not np.array_equal(pixels(area), pixels(overlay))


def test_hr_fix_progress_counts_base_and_hr_steps(renderer: Renderer, layout: Layout) -> None:
    seen: list[RenderProgress] = []
    result = renderer.render(
        layout, SMALL.replace(hr_scale=1.5, hr_steps=3, hr_denoise=0.5), on_progress=seen.append
    )
    assert result.image.size == (384, 384)
    assert [(p.stage, p.step, p.total) for p in seen] == [
        ("render", 1, 2),
        ("render", 2, 2),
        ("hires", 1, 3),
        ("hires", 2, 3),
        ("hires", 3, 3),
    ]
    # The whole render is 2 base + 3 high-res steps: the time left is computed over all five.
    assert [(p.steps_done, p.steps_in_all) for p in seen] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert seen[2].seconds_left(30.0) == pytest.approx(20.0)  # 3 of 5 steps in 30 s: 2 more take 20 s
    without_hr: list[RenderProgress] = []
    renderer.render(layout, SMALL, on_progress=without_hr.append)
    assert [(p.steps_done, p.steps_in_all) for p in without_hr] == [(1, 2), (2, 2)]


def test_no_latent_preview_is_made_unless_asked_for(renderer: Renderer, layout: Layout, monkeypatch) -> None:
    import omost_engine.render.pipeline as pipeline_module

    made: list[tuple[int, ...]] = []
    real_preview = pipeline_module.latent_preview

    def counting_preview(latent: torch.Tensor):
        made.append(tuple(latent.shape))
        return real_preview(latent)

    monkeypatch.setattr(pipeline_module, "latent_preview", counting_preview)
    params = SMALL.replace(hr_scale=1.5, hr_steps=2, hr_denoise=0.5)
    seen: list[RenderProgress] = []
    renderer.render(layout, params, on_progress=seen.append)
    assert len(seen) == 4 and all(p.preview is None for p in seen)
    assert made == []  # by default not even computed
    pipeline = renderer.pipeline()
    monkeypatch.setattr(pipeline, "preview", True)  # as Renderer(preview=True) sets it
    seen.clear()
    renderer.render(layout, params, on_progress=seen.append)
    assert len(made) == 4
    assert seen[0].preview is not None and seen[0].preview.size == (32, 32)
    assert seen[-1].preview is not None and seen[-1].preview.size == (48, 48)


def test_previews_are_off_by_default_and_an_explicit_option() -> None:
    import inspect

    assert inspect.signature(Renderer).parameters["preview"].default is False
    assert inspect.signature(RegionalPipeline).parameters["preview"].default is False


def test_cancel_between_steps(renderer: Renderer, layout: Layout) -> None:
    token = CancelToken()
    steps: list[int] = []

    def on_progress(progress: RenderProgress) -> None:
        steps.append(progress.step)
        token.cancel()

    with pytest.raises(CancelledError):
        renderer.render(layout, SMALL, on_progress=on_progress, cancel=token)
    assert steps == [1]
    with pytest.raises(CancelledError):
        renderer.render(layout, SMALL, cancel=token)  # already cancelled: nothing runs


def test_bad_parameters_are_clear_errors(renderer: Renderer, layout: Layout) -> None:
    for bad, match in [
        ({"width": 100}, "width"),
        ({"height": 260}, "multiple of 8"),
        ({"method": "magic"}, "method"),
        ({"steps": 0}, "steps"),
        ({"hr_scale": 3.0}, "hr_scale"),
    ]:
        with pytest.raises(OmostError, match=match):
            renderer.render(layout, RenderParams(**{**SMALL.to_dict(), **bad}))
    with pytest.raises(OmostError, match="no conditions"):
        renderer.render(Layout(conditions=[]), SMALL)
    with pytest.raises(OmostError, match="global description first"):
        renderer.render(Layout(conditions=layout.conditions[1:]), SMALL)


def test_stages_take_turns_on_the_accelerator(tiny_components) -> None:
    manager = RecordingManager()
    pipeline = RegionalPipeline(tiny_components, memory=manager)
    assert isinstance(
        tiny_components.unet.attn_processors[
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
        ],
        RegionalAttnProcessor,
    )
    assert not isinstance(
        tiny_components.unet.attn_processors[
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
        ],
        RegionalAttnProcessor,
    )
    layout = Layout(conditions=golden_conditions()[:2])
    pipeline(
        layout.conditions,
        SMALL.replace(steps=1, initial_latent_denoise=0.95, hr_scale=1.25, hr_steps=1),
        sketch=layout.sketch(),
    )
    assert manager.calls == ["text", "vae", "unet", "vae", "vae", "unet", "vae"]
    # A second pipeline on the same components takes the processors over; the first one gets them back.
    other = RegionalPipeline(tiny_components, memory=ModelManager(device="cpu"))
    assert other.attention.installed_on(tiny_components.unet)
    assert not pipeline.attention.installed_on(tiny_components.unet)
    pipeline(layout.conditions, SMALL.replace(steps=1))
    assert pipeline.attention.installed_on(tiny_components.unet)


def test_positive_text_is_added_to_every_condition(tiny_components) -> None:
    pipeline = RegionalPipeline(tiny_components, memory=ModelManager(device="cpu"))
    conditions = (
        golden_conditions("03_minimal_global_only") + golden_conditions("01_readme_dragon_battle")[1:3]
    )
    prompts = pipeline.encode(conditions, SMALL.replace(positive="red cat"))
    expected = pipeline.encoder.encode(
        [pipeline.encoder.chunks(c.prefixes, (*c.suffixes, "red cat")) for c in conditions]
    )
    for got, want in zip(prompts.positives, expected, strict=True):
        torch.testing.assert_close(got.cond, want.cond)
    plain = pipeline.encode(conditions, SMALL)
    assert not torch.equal(plain.positives[0].cond, prompts.positives[0].cond)


def test_area_batches_padded_conditions_like_separate_passes(tiny_components) -> None:
    pipeline = RegionalPipeline(tiny_components, memory=ModelManager(device="cpu"), max_batch=2)
    conditions = golden_conditions("01_readme_dragon_battle")[:3]
    params = SMALL.replace(method="area", overlap="average", cfg=3.0)
    prompts = pipeline.encode(conditions, params)
    assert len({p.cond.shape[1] for p in prompts.positives}) > 1  # different lengths: padding is exercised
    latent_hw = (32, 32)
    time_ids = torch.tensor([[256, 256, 0, 0, 256, 256]] * 4, dtype=torch.float32)
    denoise = pipeline._area_denoiser(prompts, params, time_ids, latent_hw)
    x = torch.randn(1, 4, *latent_hw, generator=torch.Generator().manual_seed(1)) * 3
    sigma = torch.tensor(3.0)
    with torch.no_grad():
        batched = denoise(x, sigma)
        separate = [
            pipeline._unet(x, sigma, p.cond, p.pooled, time_ids[:1])
            for p in [*prompts.positives, prompts.negative]
        ]
    from omost_engine.render.area import area_weights, blend

    weights = area_weights(
        prompts.masks, overlap="average", global_strength=0.2, region_strength=0.8, latent_hw=latent_hw
    )
    eps_pos = blend(torch.cat(separate[:-1]), weights)[None]
    expected = x - (separate[-1] + 3.0 * (eps_pos - separate[-1])) * sigma
    torch.testing.assert_close(batched, expected, atol=1e-4, rtol=1e-4)


def test_initial_latent_from_the_blurred_sketch(renderer: Renderer, layout: Layout) -> None:
    flat = np.full((90, 90, 3), 255, dtype=np.uint8)
    torch.testing.assert_close(blurred_sketch(flat, 64, 48), torch.ones(1, 3, 48, 64))
    blurred = blurred_sketch(layout.sketch(), 256, 256)
    assert blurred.shape == (1, 3, 256, 256) and float(blurred.std()) > 0
    with pytest.raises(OmostError, match="sketch"):
        blurred_sketch(np.zeros((10, 10, 3), dtype=np.uint8), 64, 64)
    plain = renderer.render(layout, SMALL)
    sketched = renderer.render(layout, SMALL.replace(initial_latent_denoise=0.95))
    assert not np.array_equal(pixels(plain), pixels(sketched))


def test_models_are_loaded_once_and_single_file_matches_folder(
    tiny_sdxl: TinySDXLPaths, renderer: Renderer, layout: Layout
) -> None:
    assert renderer.pipeline() is renderer.pipeline(str(tiny_sdxl.folder))
    single = Renderer(
        default_model=str(tiny_sdxl.single_file), device="cpu", single_file_config=str(tiny_sdxl.folder)
    )
    assert np.array_equal(pixels(single.render(layout, SMALL)), pixels(renderer.render(layout, SMALL)))


def test_bad_checkpoints_are_clear_errors(tmp_path: Path, tiny_sdxl: TinySDXLPaths) -> None:
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    partial = tmp_path / "unet-only.safetensors"  # original SDXL key layout, but one part only
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(partial))
    with pytest.raises(OmostError, match="weights of all four SDXL parts") as info:
        load_components(str(partial), config=str(tiny_sdxl.folder))
    assert "Hugging Face cache" not in str(info.value)  # the config is a local folder
    cases = [
        (str(corrupt), "could not load model"),
        (str(tmp_path / "missing.safetensors"), "does not exist"),
        (str(tmp_path), "not a diffusers SDXL model"),
        ("no-such-model", "neither a folder"),
        (
            "nobody/not-a-cached-model",
            r"not in the local Hugging Face cache .*`hf download nobody/not-a-cached-model`",
        ),
        # no config given: the shipped SDXL base configs are used (offline), and the tiny weights do not fit them
        (str(tiny_sdxl.single_file), r"weights do not fit the config in .*sdxl-base-1\.0"),
    ]
    for model, match in cases:
        with pytest.raises(OmostError, match=match) as info:
            load_components(model)
        assert "\n" not in str(info.value)
    wrong_config = tmp_path / "other"
    from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

    other = save_tiny_sdxl(wrong_config)
    unet_config = json.loads((other.folder / "unet" / "config.json").read_text())
    unet_config["block_out_channels"] = [16, 32, 64]
    (other.folder / "unet" / "config.json").write_text(json.dumps(unet_config))
    with pytest.raises(OmostError, match="do not fit the config"):
        load_components(str(tiny_sdxl.single_file), config=str(other.folder))


def test_gpu_dtypes_fp16_unet_bf16_vae_run(tiny_sdxl: TinySDXLPaths) -> None:
    """The accelerator's dtypes (fp16 UNet and text encoders, bf16 VAE) through every stage, on the CPU."""
    components = load_components(str(tiny_sdxl.folder), dtype=torch.float16, vae_dtype=torch.bfloat16)
    assert components.unet.dtype == torch.float16 and components.vae.dtype == torch.bfloat16
    pipeline = RegionalPipeline(components, memory=ModelManager(device="cpu"))
    layout = Layout(conditions=golden_conditions()[:2])
    image = pipeline(
        layout.conditions, SMALL.replace(steps=1, initial_latent_denoise=0.95), sketch=layout.sketch()
    )
    assert image.size == (256, 256) and np.asarray(image).std() > 1
