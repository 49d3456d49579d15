"""``omost-bot canvas`` (program or reply -> layout JSON) and ``omost-bot layout`` (layout -> PNG)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from omost_engine.errors import OmostError
from omost_engine.layout import Layout, LayoutLimits
from omost_engine.preview import MASKS_SIZE, masks_image, parse_size, sketch_image
from omost_engine.reply import parse_reply

EXIT_INVALID = 2
MAX_INPUT_BYTES = 1024 * 1024  # an LLM reply or program; the interpreter has its own, smaller limit


def register(subparsers: Any) -> None:
    canvas = subparsers.add_parser(
        "canvas",
        help="run a canvas program (or an LLM reply containing one) and print its layout JSON",
        description="Run a canvas program safely (no exec) and print the layout JSON on stdout. "
        "Exit status 2 and one line on stderr when the program is invalid.",
    )
    canvas.add_argument("file", help="an LLM reply or a bare canvas program; '-' reads stdin")
    canvas.add_argument("--comfyui", action="store_true", help="print the bare ComfyUI_omost list instead")
    canvas.set_defaults(func=run_canvas)

    layout = subparsers.add_parser(
        "layout",
        help="draw a layout file (the colour sketch, or with --masks the labelled region boxes), or print it "
        "for ComfyUI",
        description="Draw a layout JSON file (omost-bot's in any version, or a bare ComfyUI_omost list) as a "
        "PNG, or with --comfyui print the bare list ComfyUI_omost's Load Canvas Conditioning node takes.",
    )
    layout.add_argument("layout", help="layout JSON file; '-' reads stdin")
    layout.add_argument("--out", help="PNG file to write (required unless --comfyui)")
    layout.add_argument(
        "--comfyui", action="store_true", help="print the bare ComfyUI_omost list (conditions only) on stdout"
    )
    layout.add_argument("--size", help="WxH in pixels (default 90x90 for the sketch, 720x720 with --masks)")
    layout.add_argument("--masks", action="store_true", help="draw the numbered, labelled region boxes")
    layout.set_defaults(func=run_layout)


def read_input(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of a file, or of stdin for ``-``; one OmostError when there is more."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise OmostError(f"cannot read {path!r}: {exc.strerror}", parameter="file", value=path) from None
    if len(data) > limit:
        raise OmostError(
            f"{path!r} is too large; allowed: at most {limit} bytes",
            parameter="file",
            value=path,
            allowed=str(limit),
        )
    return data


def _fail(command: str, exc: OmostError) -> int:
    print(f"omost-bot {command}: {' '.join(str(exc).split())}", file=sys.stderr)
    return EXIT_INVALID


def run_canvas(args: argparse.Namespace) -> int:
    try:
        data = read_input(args.file, MAX_INPUT_BYTES)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise OmostError("the input is not UTF-8 text", parameter="file", value=args.file) from None
        layout = parse_reply(text)
    except OmostError as exc:
        return _fail("canvas", exc)
    sys.stdout.write(layout.dumps() if not args.comfyui else _comfyui(layout))
    sys.stdout.write("\n")
    return 0


def _comfyui(layout: Layout) -> str:
    return json.dumps(layout.to_comfyui(), ensure_ascii=False)


def run_layout(args: argparse.Namespace) -> int:
    try:
        if not args.out and not args.comfyui:
            raise OmostError(
                "nothing to do: give --out PREVIEW.png, --comfyui, or both",
                parameter="out",
                allowed="--out FILE.png and/or --comfyui",
            )
        limit = LayoutLimits.from_environ()
        layout = Layout.loads(read_input(args.layout, limit), max_bytes=limit)
        image = None
        if args.out:
            size = parse_size(args.size) if args.size else (MASKS_SIZE if args.masks else (90, 90))
            image = masks_image(layout, size) if args.masks else sketch_image(layout, size)
            try:
                image.save(args.out, format="PNG")
            except OSError as exc:
                raise OmostError(
                    f"cannot write {args.out!r}: {exc.strerror}", parameter="out", value=args.out
                ) from None
    except OmostError as exc:
        return _fail("layout", exc)
    if args.comfyui:
        sys.stdout.write(_comfyui(layout) + "\n")
    if image is not None:
        print(
            f"wrote {args.out} ({image.width}x{image.height}, {len(layout.conditions) - 1} regions)",
            file=sys.stderr,
        )
    return 0
