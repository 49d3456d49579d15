"""``omost-bot render LAYOUT.json --out DIR``: render a layout with the regional SDXL renderer.

Writes ``image.png``, ``masks.png`` and ``layout.json`` (the layout file with the model and every
parameter, so ``omost-bot render DIR/layout.json`` reproduces the image, and so does the bot's
``/omost render``). Parameters not given on the command line come from the file (ours, in any version),
else the defaults; flags that change the file's settings are recorded in the new file's ``overrides``.
``add_render_arguments`` and ``render_into`` are shared with ``omost-bot compose``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omost_engine.cli.canvas import read_input
from omost_engine.declared import choices, flag_help, flag_type
from omost_engine.errors import OmostError
from omost_engine.layout import Layout, LayoutLimits
from omost_engine.params import RenderParams, describe_overrides

EXIT_INVALID = 2

# flag -> RenderParams field, for the flags that map one to one (None = not given).
PARAM_FLAGS: dict[str, str] = {
    "method": "method",
    "global_strength": "global_strength",
    "region_strength": "region_strength",
    "overlap": "overlap",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "steps": "steps",
    "cfg": "cfg",
    "negative": "negative",
    "positive": "positive",
    "hr_scale": "hr_scale",
    "hr_steps": "hr_steps",
    "hr_denoise": "hr_denoise",
    "initial_latent_denoise": "initial_latent_denoise",
}


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """The render options (model, method, sampler and HR-fix parameters, memory)."""
    group = parser.add_argument_group("rendering")
    group.add_argument(
        "--model",
        help="SDXL model: hub id, diffusers folder or .safetensors file "
        "(default: the layout file's sdxl, else SG161222/RealVisXL_V4.0)",
    )
    group.add_argument(
        "--model-config",
        help="diffusers SDXL folder or hub id giving the configs and "
        "tokenizers of a single-file --model (default: SDXL base 1.0's, shipped with omost-bot)",
    )
    group.add_argument("--size", help="WIDTHxHEIGHT or a preset (portrait, square, landscape, ...)")
    # Every parameter flag from its declaration in omost_engine.params: type, choices, range, default.
    for field in PARAM_FLAGS.values():
        options = choices(RenderParams, field)
        group.add_argument(
            f"--{field.replace('_', '-')}",
            type=flag_type(RenderParams, field),
            choices=options or None,
            help=flag_help(RenderParams, field, default_text="default: the file's, else"),
        )
    group.add_argument(
        "--memory",
        choices=("offload", "resident"),
        default="offload",
        help="offload: only the current stage's model on the GPU (8 GB cards); resident: all",
    )
    group.add_argument("--device", help="torch device (default: cuda, mps or cpu, whichever exists)")
    group.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="SDXL weights' dtype (auto: fp16 on a GPU; bf16 on a CPU that has it for a large model)",
    )


def available_devices() -> list[str]:
    """The torch devices this machine can render on, as ``--device`` takes them."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(name: str | None) -> str | None:
    """``--device`` as given, or None for the default; OmostError when this machine has no such device."""
    if name is None:
        return None
    import torch

    allowed = available_devices()
    problem = None
    try:
        device = torch.device(name.strip())
    except (RuntimeError, ValueError):
        problem = "is not a torch device"
    else:
        known = device.type in ("cpu", "cuda", "mps")
        index_ok = device.index is None or device.type != "cuda" or device.index < torch.cuda.device_count()
        if not known or (device.type != "cpu" and (device.type not in allowed or not index_ok)):
            problem = "is not available on this machine"
    if problem is not None:
        raise OmostError(
            f"--device {name!r} {problem}; allowed: {', '.join(allowed)}",
            parameter="device",
            value=name,
            allowed=allowed,
        )
    return name.strip()


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The render flags given on the command line (RenderParams fields, plus size)."""
    given: dict[str, Any] = {
        flag: getattr(args, flag) for flag in PARAM_FLAGS if getattr(args, flag, None) is not None
    }
    if getattr(args, "size", None):
        given["size"] = args.size
    return given


def file_params(layout: Layout | None) -> RenderParams:
    """The defaults with the file's own render settings over them."""
    return RenderParams().replace(**(layout.render_settings if layout is not None else {}))


def params_from_args(args: argparse.Namespace, layout: Layout | None = None) -> RenderParams:
    """RenderParams from the defaults, then the layout file's settings, then the flags given."""
    changes: dict[str, Any] = {}
    size = getattr(args, "size", None)
    if size:
        changes["width"], changes["height"] = RenderParams.size_from_aspect(size)
    for flag, field in PARAM_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    return file_params(layout).replace(**changes)


def model_from_args(args: argparse.Namespace, layout: Layout | None = None) -> str | None:
    if getattr(args, "model", None):
        return str(args.model)
    stored = layout.meta.get("sdxl") if layout is not None else None
    return stored if isinstance(stored, str) and stored else None


def render_into(layout: Layout, out_dir: str | Path, args: argparse.Namespace) -> None:
    """Render ``layout`` with the options in ``args``; write image.png, masks.png, layout.json to ``out_dir``.

    Raises OmostError for bad parameters, models or layouts.
    """
    from omost_engine.render.renderer import Renderer  # torch/diffusers only when rendering

    device = check_device(getattr(args, "device", None))
    params = params_from_args(args, layout)
    model = model_from_args(args, layout)
    overrides = list(layout.meta.get("overrides") or [])
    if layout.render_settings:  # flags over a file's own settings are overrides, worth recording
        overrides += describe_overrides(file_params(layout), params, _given(args), source="flag")
        stored_model = layout.meta.get("sdxl")
        if getattr(args, "model", None) and stored_model and stored_model != args.model:
            overrides.append(f"sdxl: {stored_model!r} -> {str(args.model)!r} (--model)")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OmostError(
            f"cannot create output folder {str(out)!r}: {exc.strerror}", parameter="out", value=str(out)
        ) from None
    renderer = Renderer(
        device=device,
        memory_mode=getattr(args, "memory", "offload"),
        single_file_config=getattr(args, "model_config", None),
        dtype=getattr(args, "dtype", None),
    )

    def report(progress: Any) -> None:
        if not getattr(args, "quiet", False):
            print(f"\r{progress.stage} {progress.step}/{progress.total}", end="", file=sys.stderr, flush=True)

    result = renderer.render(layout, params, model=model, on_progress=report)
    if not getattr(args, "quiet", False):
        print(f"\rrendered in {result.seconds:.1f} s", file=sys.stderr)
    result.image.save(out / "image.png")
    result.masks.save(out / "masks.png")
    written = layout.with_meta(
        render=result.params.to_dict(),
        sdxl=result.model,
        seconds=round(result.seconds, 3),
        overrides=overrides,
    )
    (out / "layout.json").write_text(written.dumps() + "\n", encoding="utf-8")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "render",
        help="render a layout JSON file into image.png, masks.png and layout.json",
        description="Render a layout (omost-bot layout JSON or a bare ComfyUI_omost list) with regional SDXL. "
        "Exit status 2 and one line on stderr for bad input.",
    )
    parser.add_argument(
        "layout", help="layout JSON file (ours in any version, or a ComfyUI_omost list); '-' reads stdin"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_render_arguments(parser)
    parser.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    try:
        limit = LayoutLimits.from_environ()  # OMOST_MAX_LAYOUT_BYTES, the bot's limit too
        layout = Layout.loads(read_input(args.layout, limit), max_bytes=limit)
        if not getattr(args, "quiet", False):
            for note in layout.notes:
                print(f"note: {note}", file=sys.stderr)
        render_into(layout, args.out, args)
    except OmostError as exc:
        print(f"omost-bot render: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INVALID
    return 0
