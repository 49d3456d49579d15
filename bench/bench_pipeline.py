"""The whole tiny regional pipeline, with and without regions, one process, ratios against the baseline.

Renders the README's dragon layout (global + 4 regions, about 16 CLIP chunks) on the tiny SDXL built
in code, and the same global condition alone (the baseline). Rows:

* global only, stock attention  diffusers' ``AttnProcessor2_0`` everywhere (no regional processor)
* same context, stock attention the dragon's conditions made full-frame: its 16-chunk context, stock
* global only                   this project's processors installed, one condition
* omost, 4 regions              regional cross-attention (one UNet pass per step for both CFG rows)
* area, 4 regions               ComfyUI-style blend (one UNet row per condition, batched)

Median seconds per render, the ratio to the stock global-only render and to the stock render
over the same context.

    python bench/bench_pipeline.py [--device cuda] [--size 512] [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
from omost_engine.render.renderer import Renderer
from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "goldens" / "01_readme_dragon_battle.json"


class StockAttention(RegionalAttention):
    """The baseline: leaves whatever processors the UNet has (diffusers' stock ones) in place."""

    def installed_on(self, unet: torch.nn.Module) -> bool:
        return True


def dragon_layout() -> Layout:
    bag = json.loads(GOLDEN.read_text())["process_output"]["bag_of_conditions"]
    return Layout(conditions=[Condition(rect=tuple(c["mask"]["rect"]), prefixes=tuple(c["prefixes"]),
                                        suffixes=tuple(c["suffixes"]), color=(128, 128, 128)) for c in bag])


def median_seconds(renderer: Renderer, layout: Layout, params: RenderParams, repeats: int) -> float:
    renderer.render(layout, params)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        renderer.render(layout, params)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: steadier ratios on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layout = dragon_layout()
    global_only = Layout(conditions=layout.conditions[:1])
    # The dragon's conditions all as full-frame ones: the same 16-chunk context with nothing regional.
    full_frame = Layout(conditions=[replace(c, rect=(0, 90, 0, 90)) for c in layout.conditions])
    params = RenderParams(width=args.size, height=args.size, steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_tiny_sdxl(Path(tmp))
        renderer = Renderer(default_model=str(paths.folder), device=args.device, memory_mode="resident",
                            preview=False)
        pipeline = renderer.pipeline()
        regional = pipeline.attention
        pipeline.attention = StockAttention()  # diffusers' own processor on every layer
        pipeline.components.unet.set_attn_processor(AttnProcessor2_0())
        rows = [("global only, stock attention", median_seconds(renderer, global_only, params, args.repeats)),
                ("same context, stock attention", median_seconds(renderer, full_frame, params, args.repeats))]
        pipeline.attention = regional  # reinstalls the regional processors on the next render
        rows += [
            ("global only", median_seconds(renderer, global_only, params, args.repeats)),
            ("omost, 4 regions", median_seconds(renderer, layout, params, args.repeats)),
            ("area, 4 regions", median_seconds(renderer, layout, params.replace(method="area"), args.repeats)),
        ]
    base = rows[0][1]
    print(f"tiny SDXL on {args.device}, {args.size}x{args.size}, {args.steps} steps, median of {args.repeats}")
    print(f"{'render':<32}{'seconds':>10}{'ratio':>8}{'vs same context':>17}")
    for name, seconds in rows:
        print(f"{name:<32}{seconds:>10.3f}{seconds / base:>8.2f}{seconds / rows[1][1]:>17.2f}")


if __name__ == "__main__":
    main()
