"""A 4-image variations grid rendered batched against four single renders, one process, ratios.

Rows (the README's dragon layout: global + 4 regions):

* four single renders   the baseline: ``Renderer.render`` four times, seeds s .. s+3
* grid, sequential      ``render(count=4, strategy="sequential")``: the same four renders as one job
* grid, batched         ``render(count=4, strategy="batched")``: the four latents in every UNet call

Fastest seconds per job over interleaved rounds (a shared machine's busy spells hit all rows alike),
and each row's ratio to the baseline. The tiny SDXL built in code by default; ``--model`` takes a
real SDXL (hub id, folder or .safetensors) where one is at hand.

    python bench/bench_variations.py [--device cuda] [--size 256] [--steps 4] [--repeats 3] [--method omost]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_pipeline import dragon_layout  # the golden's layout, as the pipeline benchmark renders it

from omost_engine.params import RenderParams
from omost_engine.render.renderer import Renderer
from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

COUNT = 4


def fastest(
    jobs: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    best = dict.fromkeys(jobs, float("inf"))
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, job in jobs.items():
            sync()
            start = time.perf_counter()
            job()
            sync()
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def run(renderer: Renderer, args: argparse.Namespace) -> None:
    layout = dragon_layout()
    params = RenderParams(width=args.size, height=args.size, steps=args.steps, method=args.method, seed=100)
    sync = torch.cuda.synchronize if renderer.memory.device.type == "cuda" else (lambda: None)
    jobs: dict[str, Callable[[], object]] = {
        "four single renders": lambda: [
            renderer.render(layout, params.replace(seed=100 + i)) for i in range(COUNT)
        ],
        "grid, sequential": lambda: renderer.render(layout, params, count=COUNT, strategy="sequential"),
        "grid, batched": lambda: renderer.render(layout, params, count=COUNT, strategy="batched"),
    }
    rows = list(fastest(jobs, args.repeats, sync).items())
    base = rows[0][1]
    print(
        f"{args.model or 'tiny SDXL'} on {renderer.memory.device}, {args.size}x{args.size}, {args.steps} steps, "
        f"method {args.method}, {COUNT} images, fastest of {args.repeats} interleaved rounds"
    )
    print(f"{'job':<24}{'seconds':>10}{'vs four singles':>17}")
    for name, seconds in rows:
        print(f"{name:<24}{seconds:>10.3f}{seconds / base:>17.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="a real SDXL (default: the tiny one built in code)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=("omost", "area"), default="omost")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: steadier ratios on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        run(Renderer(default_model=args.model, device=args.device, memory_mode="resident"), args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = save_tiny_sdxl(Path(tmp))
        run(Renderer(default_model=str(paths.folder), device=args.device, memory_mode="resident"), args)


if __name__ == "__main__":
    main()
