"""``omost-bot render LAYOUT.json --out DIR``: render a layout with the regional SDXL renderer.

Writes ``image.png``, ``masks.png`` and ``layout.json`` (the layout with ``meta.render`` = model and
every parameter, so ``omost-bot render DIR/layout.json`` reproduces the image). Parameters not given
on the command line come from the layout's ``meta.render`` when it has one, else the defaults.
``add_render_arguments`` and ``render_into`` are shared with ``omost-bot compose``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omost_engine.errors import OmostError
from omost_engine.layout import MAX_LAYOUT_BYTES, Layout
from omost_engine.params import RenderParams

EXIT_INVALID = 2

# flag -> RenderParams field, for the flags that map one to one (None = not given).
PARAM_FLAGS: dict[str, str] = {
    "method": "method", "global_strength": "global_strength", "region_strength": "region_strength",
    "overlap": "overlap", "seed": "seed", "width": "width", "height": "height", "steps": "steps",
    "cfg": "cfg", "negative": "negative", "positive": "positive", "hr_scale": "hr_scale",
    "hr_steps": "hr_steps", "hr_denoise": "hr_denoise", "initial_latent_denoise": "initial_latent_denoise",
}


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """The render options (model, method, sampler and HR-fix parameters, memory)."""
    group = parser.add_argument_group("rendering")
    group.add_argument("--model", help="SDXL model: hub id, diffusers folder or .safetensors file "
                       "(default: the layout's meta.render.model, else SG161222/RealVisXL_V4.0)")
    group.add_argument("--model-config", help="diffusers SDXL folder or hub id giving the configs and "
                       "tokenizers of a single-file --model (default: SDXL base 1.0's, shipped with omost-bot)")
    group.add_argument("--method", choices=("omost", "area"), help="regional method (default omost)")
    group.add_argument("--global-strength", type=float, help="method area: weight of the global prompt (0.2)")
    group.add_argument("--region-strength", type=float, help="method area: weight of the regions (0.8)")
    group.add_argument("--overlap", choices=("overlay", "average"), help="method area: overlapping regions")
    group.add_argument("--seed", type=int, help="noise seed (12345)")
    group.add_argument("--size", help="WIDTHxHEIGHT or a preset (portrait, square, landscape, ...)")
    group.add_argument("--width", type=int, help="image width, a multiple of 8 (896)")
    group.add_argument("--height", type=int, help="image height, a multiple of 8 (1152)")
    group.add_argument("--steps", type=int, help="sampling steps (25)")
    group.add_argument("--cfg", type=float, help="classifier-free guidance scale (5)")
    group.add_argument("--negative", help="negative prompt")
    group.add_argument("--positive", help="extra text added to every condition")
    group.add_argument("--hr-scale", type=float, help="HR fix upscale 1..2 (1 = off)")
    group.add_argument("--hr-steps", type=int, help="HR fix steps (20)")
    group.add_argument("--hr-denoise", type=float, help="HR fix denoise (0.4)")
    group.add_argument("--initial-latent-denoise", type=float,
                       help="start from the blurred colour sketch with this denoise (0.95..0.99; off by default)")
    group.add_argument("--memory", choices=("offload", "resident"), default="offload",
                       help="offload: only the current stage's model on the GPU (8 GB cards); resident: all")
    group.add_argument("--device", help="torch device (default: cuda, mps or cpu, whichever exists)")
    group.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                       help="SDXL weights' dtype (auto: fp16 on a GPU; bf16 on a CPU that has it for a large model)")


def params_from_args(args: argparse.Namespace, layout: Layout | None = None) -> RenderParams:
    """RenderParams from the defaults, then the layout's meta.render.params, then the flags given."""
    stored = (layout.meta.get("render") or {}).get("params") if layout is not None else None
    base = RenderParams.from_dict(stored) if isinstance(stored, dict) else RenderParams()
    changes: dict[str, Any] = {}
    size = getattr(args, "size", None)
    if size:
        changes["width"], changes["height"] = RenderParams.size_from_aspect(size)
    for flag, field in PARAM_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    return base.replace(**changes)


def model_from_args(args: argparse.Namespace, layout: Layout | None = None) -> str | None:
    if getattr(args, "model", None):
        return str(args.model)
    stored = (layout.meta.get("render") or {}).get("model") if layout is not None else None
    return stored if isinstance(stored, str) and stored else None


def render_into(layout: Layout, out_dir: str | Path, args: argparse.Namespace) -> None:
    """Render ``layout`` with the options in ``args``; write image.png, masks.png, layout.json to ``out_dir``.

    Raises OmostError for bad parameters, models or layouts.
    """
    from omost_engine.render.renderer import Renderer  # torch/diffusers only when rendering

    params = params_from_args(args, layout)
    model = model_from_args(args, layout)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OmostError(f"cannot create output folder {str(out)!r}: {exc.strerror}",
                         parameter="out", value=str(out)) from None
    renderer = Renderer(device=getattr(args, "device", None), memory_mode=getattr(args, "memory", "offload"),
                        single_file_config=getattr(args, "model_config", None), dtype=getattr(args, "dtype", None))

    def report(progress: Any) -> None:
        if not getattr(args, "quiet", False):
            print(f"\r{progress.stage} {progress.step}/{progress.total}", end="", file=sys.stderr, flush=True)

    result = renderer.render(layout, params, model=model, on_progress=report)
    if not getattr(args, "quiet", False):
        print(f"\rrendered in {result.seconds:.1f} s", file=sys.stderr)
    result.image.save(out / "image.png")
    result.masks.save(out / "masks.png")
    meta = {"model": result.model, "seconds": round(result.seconds, 3), "params": result.params.to_dict()}
    (out / "layout.json").write_text(layout.with_meta(render=meta).dumps() + "\n", encoding="utf-8")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render", help="render a layout JSON file into image.png, masks.png and layout.json",
        description="Render a layout (omost-bot layout JSON or a bare ComfyUI_omost list) with regional SDXL. "
        "Exit status 2 and one line on stderr for bad input.",
    )
    parser.add_argument("layout", help="layout JSON file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_render_arguments(parser)
    parser.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    try:
        path = Path(args.layout)
        try:
            data = path.read_bytes() if path.stat().st_size <= MAX_LAYOUT_BYTES else None
        except OSError as exc:
            raise OmostError(f"cannot read {args.layout!r}: {exc.strerror}", parameter="layout",
                             value=args.layout) from None
        if data is None:
            raise OmostError(f"{args.layout!r} is too large; allowed: at most {MAX_LAYOUT_BYTES} bytes",
                             parameter="layout", value=args.layout)
        render_into(Layout.loads(data), args.out, args)
    except OmostError as exc:
        print(f"omost-bot render: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INVALID
    return 0
