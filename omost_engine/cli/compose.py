"""``omost-bot compose PROMPT --out DIR``: one LLM turn (optionally continuing a conversation), then render.

Writes ``DIR/reply.md`` (the raw reply, also when it holds no valid program), ``DIR/layout.json`` and
``DIR/conversation.json`` (which ``--continue DIR`` reads back for an edit turn). Progress goes to
stderr; bad input is exit status 2 and one line. ``--seed`` seeds both the LLM and the render, as
in the original app.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from omost_engine.declared import flag_help, flag_type
from omost_engine.engine import ChatMessage
from omost_engine.errors import CancelledError, OmostError
from omost_engine.llm.conversation import load_conversation, save_conversation
from omost_engine.params import LLMParams
from omost_engine.reply import extract_code

EXIT_INVALID = 2
EXIT_INTERRUPTED = 130
API_KEY_ENV = "OMOST_LLM_API_KEY"


def _render_module() -> ModuleType | None:
    """The renderer's CLI helpers, when this build has them."""
    try:
        return importlib.import_module("omost_engine.cli.render")
    except ModuleNotFoundError as exc:
        if exc.name != "omost_engine.cli.render":
            raise
        return None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compose",
        help="ask the Omost LLM for a layout (and render it)",
        description="Ask the Omost LLM to compose PROMPT into a canvas layout, then render it. Writes "
        "reply.md, layout.json and conversation.json into --out. Exit status 2 and one line on stderr "
        "for bad input or a reply without a valid program.",
    )
    parser.add_argument("prompt", help="what to draw, or an edit such as 'change the dragon to a dinosaur'")
    parser.add_argument("--out", required=True, help="output folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--llm",
        help="model: a known name, hub id or local folder (default lllyasviel/omost-llama-3-8b-4bits)",
    )
    source.add_argument("--llm-endpoint", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    parser.add_argument("--llm-model", help="model name to request from --llm-endpoint (default: its first)")
    parser.add_argument("--llm-api-key", help=f"API key for --llm-endpoint (default: ${API_KEY_ENV})")
    parser.add_argument("--allow-cpu", action="store_true", help="run a large LLM without a GPU (very slow)")
    parser.add_argument(
        "--llm-dtype",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="local LLM compute dtype (auto: bf16/fp16 on a GPU; on a CPU bf16 for 1B+ parameters "
        "where supported, else fp32)",
    )
    for field in ("temperature", "top_p", "max_new_tokens"):  # from the declarations in omost_engine.params
        parser.add_argument(
            f"--{field.replace('_', '-')}",
            type=flag_type(LLMParams, field),
            default=getattr(LLMParams(), field),
            help=flag_help(LLMParams, field),
        )
    decoding = parser.add_argument_group("decoding (local models; both on by default, see docs/decoding.md)")
    decoding.add_argument(
        "--no-prompt-lookup",
        dest="prompt_lookup",
        action="store_false",
        help="no draft tokens copied from the conversation (prompt-lookup decoding)",
    )
    decoding.add_argument(
        "--draft-tokens",
        type=int,
        default=LLMParams().prompt_lookup_tokens,
        metavar="N",
        help=flag_help(LLMParams, "prompt_lookup_tokens"),
    )
    decoding.add_argument(
        "--no-grammar", dest="grammar", action="store_false", help="no canvas-program grammar while decoding"
    )
    parser.add_argument(
        "--context-tokens",
        type=int,
        default=8192,
        help="usable context; older turns are dropped beyond it (8192)",
    )
    parser.add_argument(
        "--continue",
        dest="continue_dir",
        metavar="DIR",
        help="continue the conversation saved in DIR (an edit turn)",
    )
    parser.add_argument("--no-render", action="store_true", help="stop after the layout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    render = _render_module()
    if render is not None:
        render.add_render_arguments(parser)  # brings --seed, shared with the LLM
    else:
        parser.add_argument("--seed", type=int, help="seed (12345)")
    parser.set_defaults(func=run_compose)


def _llm_params(args: argparse.Namespace) -> LLMParams:
    seed = args.seed if args.seed is not None else LLMParams().seed
    return LLMParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=seed,
        prompt_lookup=args.prompt_lookup,
        prompt_lookup_tokens=args.draft_tokens,
        grammar=args.grammar,
    ).validated()


def _service(args: argparse.Namespace, llm: str | None, *, endpoint: bool) -> Any:
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.service import ChatService, is_endpoint

    if llm is not None and (endpoint or is_endpoint(llm)):
        from omost_engine.llm.openai_backend import OpenAIBackend

        backend = OpenAIBackend(
            llm,
            model=args.llm_model,
            api_key=args.llm_api_key or os.environ.get(API_KEY_ENV),
            context_tokens=args.context_tokens,
        )
        return ChatService(backend=backend, context_tokens=args.context_tokens)
    loader = LLMLoader(allow_cpu=args.allow_cpu, dtype=getattr(args, "llm_dtype", None))
    if llm:
        return ChatService(loader=loader, context_tokens=args.context_tokens, default_llm=llm)
    return ChatService(loader=loader, context_tokens=args.context_tokens)


class _ProgressLine:
    """Progress on stderr: one line rewritten in place (at most 10 times a second) on a terminal;
    elsewhere (a log file) one line each time a region appears."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.terminal = sys.stderr.isatty()
        self.shown = False
        self.last_time = 0.0
        self.last_regions = -1

    def __call__(self, progress: Any) -> None:
        if self.quiet:
            return
        regions = max(0, len(progress.conditions) - 1)
        now = time.monotonic()
        changed = regions != self.last_regions
        if not changed and (not self.terminal or now - self.last_time < 0.1):
            return
        self.last_time, self.last_regions = now, regions
        text = f"LLM: {progress.tokens} tokens, {progress.tokens_per_second:.1f} tokens/s, {regions} regions"
        if self.terminal:
            self.shown = True
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def _make_out(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OmostError(
            f"cannot create output folder {path!r}: {exc.strerror}", parameter="out", value=path
        ) from None
    return out


def compose(args: argparse.Namespace) -> int:
    from omost_engine.llm.service import InvalidReplyError

    params = _llm_params(args)
    history: list[ChatMessage] = []
    llm = args.llm_endpoint or args.llm
    if args.continue_dir:
        history, stored = load_conversation(Path(args.continue_dir) / "conversation.json")
        llm = llm or stored
    render = None if args.no_render else _render_module()
    if render is not None:  # a device this machine lacks is refused before the LLM runs, not after
        render.check_device(getattr(args, "device", None))
    out = _make_out(args.out)
    service = _service(args, llm, endpoint=bool(args.llm_endpoint))
    progress = _ProgressLine(args.quiet)
    try:
        result = service.chat(history, args.prompt, params, on_progress=progress)
    except InvalidReplyError as exc:
        (out / "reply.md").write_text(exc.reply, encoding="utf-8")
        raise
    finally:
        progress.close()
    (out / "reply.md").write_text(result.reply, encoding="utf-8")
    layout = result.layout.with_meta(program=extract_code(result.reply), llm=result.model)
    (out / "layout.json").write_text(layout.dumps() + "\n", encoding="utf-8")
    turn = [ChatMessage("user", args.prompt), ChatMessage("assistant", result.reply)]
    save_conversation(out / "conversation.json", [*history, *turn], model=llm or service.default_llm)
    if not args.quiet:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        print(
            f"{result.tokens} tokens in {result.seconds:.1f} s from {result.model}; "
            f"{len(result.layout.conditions) - 1} regions -> {out / 'layout.json'}",
            file=sys.stderr,
        )
    if render is not None:
        del service  # free the LLM before the renderer needs the memory
        gc.collect()
        _empty_cuda_cache()
        render.render_into(layout, out, args)
    return 0


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")  # only when the LLM ran locally and loaded torch
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_compose(args: argparse.Namespace) -> int:
    try:
        return compose(args)
    except OmostError as exc:
        print(f"omost-bot compose: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INVALID
    except (KeyboardInterrupt, CancelledError):
        print("omost-bot compose: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
