"""Regional cross-attention at real SDXL shapes: this project's fused processor vs plain SDPA vs the original.

Batch 2 (positive + negative rows); (10 heads, 56x72 queries) and (20 heads, 28x36 queries), the two
cross-attention levels of an 896x1152 SDXL render; heads of 64; a context of 77 x bags for the global
condition plus 4 or plus 8 regions (4 bags for the global condition, 3 per region, like the README's
dragon layout). Three ways to compute the same layer output:

* plain     F.scaled_dot_product_attention over the same context, no regions (the floor);
* fused     what ``RegionalAttnProcessor`` runs (``regional_attention``): the per-token scale folded into
            the keys and the coverage as an additive mask for the positive row, and the negative row
            over its own 77 tokens only (no mask);
* explicit  the original's formulation: the (B, heads, N, T) score matrix built and masked by hand.

Prints the fastest of interleaved runs of each and the ratios fused/plain and explicit/fused, one run. "fused" is
below "plain" because the negative row attends to its own 77 tokens instead of the padded context;
"row mask" isolates the masking cost: the positive row with mask and scale vs the same row plain.
The mask is built once per resolution per render (cached); its cost is printed separately.

    python bench/bench_attention.py [--device cuda] [--repeats 5] [--all-pairs]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from omost_engine.conditions import Condition
from omost_engine.render.attention import (
    RegionState,
    explicit_regional_attention,
    regional_attention,
    regional_sdpa,
)

HEAD_DIM = 64
GLOBAL_BAGS, REGION_BAGS = 4, 3
LATENT_HW = (144, 112)  # 896x1152 / 8
LEVELS = {(10, 72 * 56): "10 heads, 56x72", (20, 36 * 28): "20 heads, 28x36"}
REGION_RECTS = [
    (0, 45, 0, 90),
    (20, 70, 0, 40),
    (20, 70, 50, 90),
    (40, 90, 20, 70),
    (0, 40, 0, 40),
    (0, 40, 50, 90),
    (50, 90, 0, 40),
    (50, 90, 50, 90),
]


def region_state(regions: int, device: torch.device) -> RegionState:
    rects = [(0, 90, 0, 90), *REGION_RECTS[:regions]]
    masks = torch.stack(
        [torch.from_numpy(Condition(rect=r, prefixes=(), suffixes=(), color=(0, 0, 0)).mask()) for r in rects]
    )
    bags = [GLOBAL_BAGS] + [REGION_BAGS] * regions
    positive = [i for i, b in enumerate(bags) for _ in range(77 * b)]
    negative = [len(rects)] * 77 + [-1] * (len(positive) - 77)
    masks = torch.cat([masks, torch.ones(1, 90, 90)])
    return RegionState(
        masks=masks.to(device),
        token_region=torch.tensor([positive, negative], device=device),
        latent_hw=LATENT_HW,
    )


def plan_seconds(regions: int, n: int, dtype: torch.dtype, device: torch.device) -> float:
    """Building one layer's mask and scales from scratch (once per resolution per render)."""
    fresh = region_state(regions, device)
    start = time.perf_counter()
    fresh.plan(n, dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Fastest of ``repeats`` runs of each function, the functions taking turns within every round so
    that a busy spell on a shared machine hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up (kernel selection, allocations)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--all-pairs", action="store_true", help="every (heads, queries) pair, not only SDXL's"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: steadier ratios on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pairs = [(h, n) for h in (10, 20) for n in (72 * 56, 36 * 28)] if args.all_pairs else list(LEVELS)
    print(
        f"device {device}, {dtype}, batch 2, head dim {HEAD_DIM}, fastest of {args.repeats} interleaved runs"
    )
    print(
        f"{'layer':<26}{'context':>9}{'plain ms':>10}{'fused ms':>10}{'explicit ms':>13}"
        f"{'fused/plain':>13}{'explicit/fused':>16}{'row mask':>10}{'build ms':>10}"
    )
    generator = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        for regions in (4, 8):
            state = region_state(regions, device)
            tokens = state.token_region.shape[1]
            for heads, n in pairs:
                q = torch.randn(2, heads, n, HEAD_DIM, generator=generator).to(device, dtype)
                k = torch.randn(2, heads, tokens, HEAD_DIM, generator=generator).to(device, dtype)
                v = torch.randn(2, heads, tokens, HEAD_DIM, generator=generator).to(device, dtype)
                mask_s = plan_seconds(regions, n, dtype, device)
                plan = state.plan(n, dtype, device)
                bias, key_scale = state.bias_and_scale(n, dtype, device)
                visible = torch.isfinite(bias[:, 0])
                token_scale = key_scale[:, 0, :, 0]
                t = timed_interleaved(
                    {
                        "plain": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
                        "fused": lambda q=q, k=k, v=v, p=plan: regional_attention(q, k, v, p),
                        "explicit": lambda q=q, k=k, v=v, m=visible, s=token_scale: (
                            explicit_regional_attention(q, k, v, m, s)[0]
                        ),
                        "row plain": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                            q[:1], k[:1], v[:1]
                        ),
                        "row masked": lambda q=q, k=k, v=v, b=bias, s=key_scale: regional_sdpa(
                            q[:1], k[:1], v[:1], b[:1], s[:1]
                        ),
                    },
                    device,
                    args.repeats,
                )
                plain, fused, explicit = t["plain"], t["fused"], t["explicit"]
                row_plain, row_masked = t["row plain"], t["row masked"]
                label = f"{LEVELS.get((heads, n), f'{heads} heads, {n} px')}, +{regions} regions"
                print(
                    f"{label:<26}{tokens:>9}{plain * 1e3:>10.2f}{fused * 1e3:>10.2f}{explicit * 1e3:>13.2f}"
                    f"{fused / plain:>13.2f}{explicit / fused:>16.2f}{row_masked / row_plain:>10.2f}{mask_s * 1e3:>10.1f}"
                )


if __name__ == "__main__":
    main()
