"""The whole tiny regional pipeline, with and without regions, one process, ratios against the baseline.

Renders the README's dragon layout (global + 4 regions, about 16 CLIP chunks) on the tiny SDXL built
in code, and the same global condition alone (the baseline). Rows:

* global only, stock attention  diffusers' ``AttnProcessor2_0`` everywhere (no regional processor)
* same context, stock attention the dragon's conditions made full-frame: its 16-chunk context, stock
* global only                   this project's processors installed, one condition
* omost, 4 regions              regional cross-attention (one UNet pass per step for both CFG rows)
* area, 4 regions               ComfyUI-style blend (one UNet row per condition, batched)

Fastest seconds per render (interleaved rounds), the ratio to the stock global-only render and to the stock render
over the same context.

    python bench/bench_pipeline.py [--device cuda] [--size 512] [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from omost_engine.conditions import Condition
from omost_engine.layout import Layout
from omost_engine.params import RenderParams
from omost_engine.render.attention import RegionalAttention
from omost_engine.render.pipeline import RegionalPipeline
from omost_engine.render.renderer import Renderer
from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

GOLDEN = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "goldens" / "01_readme_dragon_battle.json"
)


class StockAttention(RegionalAttention):
    """The baseline: leaves whatever processors the UNet has (diffusers' stock ones) in place."""

    def installed_on(self, unet: torch.nn.Module) -> bool:
        return True


def dragon_layout() -> Layout:
    bag = json.loads(GOLDEN.read_text())["process_output"]["bag_of_conditions"]
    return Layout(
        conditions=[
            Condition(
                rect=tuple(c["mask"]["rect"]),
                prefixes=tuple(c["prefixes"]),
                suffixes=tuple(c["suffixes"]),
                color=(128, 128, 128),
            )
            for c in bag
        ]
    )


def fastest_seconds(
    renderer: Renderer, cases: dict[str, tuple[Layout, RenderParams, RegionalAttention]], repeats: int
) -> dict[str, float]:
    """Fastest of ``repeats`` renders per case, the cases taking turns within every round (a shared
    machine's busy spells then hit all of them alike)."""
    pipeline = renderer.pipeline()
    best = dict.fromkeys(cases, float("inf"))
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, (layout, params, attention) in cases.items():
            use(pipeline, attention)
            start = time.perf_counter()
            renderer.render(layout, params)
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def use(pipeline: RegionalPipeline, attention: RegionalAttention) -> None:
    """Switch between diffusers' stock processors and the regional ones."""
    pipeline.attention = attention
    unet = pipeline.components.unet
    if isinstance(attention, StockAttention):
        unet.set_attn_processor(AttnProcessor2_0())
    elif not attention.installed_on(unet):
        attention.install(unet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: steadier ratios on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layout = dragon_layout()
    global_only = Layout(conditions=layout.conditions[:1])
    # The dragon's conditions all as full-frame ones: the same 16-chunk context with nothing regional.
    full_frame = Layout(conditions=[replace(c, rect=(0, 90, 0, 90)) for c in layout.conditions])
    params = RenderParams(width=args.size, height=args.size, steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_tiny_sdxl(Path(tmp))
        renderer = Renderer(
            default_model=str(paths.folder), device=args.device, memory_mode="resident", preview=False
        )
        regional, stock = renderer.pipeline().attention, StockAttention()
        cases = {
            "global only, stock attention": (global_only, params, stock),
            "same context, stock attention": (full_frame, params, stock),
            "global only": (global_only, params, regional),
            "omost, 4 regions": (layout, params, regional),
            "area, 4 regions": (layout, params.replace(method="area"), regional),
        }
        rows = list(fastest_seconds(renderer, cases, args.repeats).items())
    base = rows[0][1]
    print(
        f"tiny SDXL on {args.device}, {args.size}x{args.size}, {args.steps} steps, fastest of {args.repeats} interleaved rounds"
    )
    print(f"{'render':<32}{'seconds':>10}{'ratio':>8}{'vs same context':>17}")
    for name, seconds in rows:
        print(f"{name:<32}{seconds:>10.3f}{seconds / base:>8.2f}{seconds / rows[1][1]:>17.2f}")


if __name__ == "__main__":
    main()
