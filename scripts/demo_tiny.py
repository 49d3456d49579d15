"""A complete CPU run of the pipeline on tiny random models built in code: LLM -> canvas -> render.

    python scripts/demo_tiny.py OUT_DIR [PROMPT] [--max-new-tokens N] [--steps N]

It saves a tiny Llama-3-style LLM and a tiny SDXL under OUT_DIR/models, then runs
``omost-bot compose`` with them, so every real code path runs (model loading from folders,
grammar-constrained decoding, the safe interpreter, regional rendering with one mask per region).
The LLM's weights are random except for a fixed preference for the tokens that close a string, a
list or a call (``steer_to_structure``): a purely random model fills every string up to the
grammar's length limit and runs out of tokens before its first region, while this one writes
short strings and gets to ``add_local_description``. The grammar still decides what is valid; the
tiny SDXL paints noise-like pictures: the demo shows the mechanics, not image quality.

Works from the repository root with any Python that has the project's dependencies (the set-up's
``.venv/bin/python``, or ``python`` with the project installed): the script puts the repository on
``sys.path`` itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file, sys.path[0] is scripts/, where `bot` is not
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_PROMPT = "a dragon fighting warriors"
# Logit preferences of the steered tiny LLM, by what a token is (the first that fits applies).
CLOSING_BIAS = 3.0  # tokens with ' " ] ) , or a newline: strings, lists and calls end soon
WORD_BIAS = 2.5  # whole words: strings read as words rather than punctuation


def steer_to_structure(model: Any, tokenizer: Any) -> None:
    """Give a random Llama a fixed, position-independent preference per token, in place.

    Residual channel 0 is held at a constant (every token's embedding has 1.0 there and no layer
    writes to it), so after the final norm it carries a positive scale and ``lm_head[:, 0]`` acts as
    a per-token logit bias; the rest of the network stays random and keeps its small variation.
    """
    import torch

    inner = model.model
    with torch.no_grad():
        inner.embed_tokens.weight[:, 0] = 1.0
        for layer in inner.layers:
            layer.self_attn.o_proj.weight[0, :] = 0.0
            layer.mlp.down_proj.weight[0, :] = 0.0
        bias = torch.zeros(model.lm_head.weight.shape[0])
        for token_id in range(len(tokenizer)):
            text = tokenizer.decode([token_id])
            if any(c in text for c in "'\"]),\n"):
                bias[token_id] = CLOSING_BIAS
            elif len(text.strip()) >= 3 and text.strip().isalpha():  # canvas, add, local, dragon, ...
                bias[token_id] = WORD_BIAS
        # Channel 0 after the final RMSNorm is about sqrt(hidden size) (it dominates the tiny norm).
        model.lm_head.weight[:, 0] = bias / model.config.hidden_size**0.5


def save_demo_llm(folder: Path) -> Path:
    from omost_engine.testing.tiny_llm import build_model, build_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    steer_to_structure(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python scripts/demo_tiny.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (models and the compose turn go here)")
    parser.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help="what to draw (%(default)s)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        help="LLM tokens (%(default)s); the decoder completes the program when they run out",
    )
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (%(default)s)")
    args = parser.parse_args(argv)
    out, prompt = Path(args.out), args.prompt

    try:
        import torch  # noqa: F401  # the first of the project's dependencies the demo needs
    except ModuleNotFoundError as exc:
        print(
            f"demo_tiny: {exc}: run it with the project's environment, e.g. .venv/bin/python "
            "scripts/demo_tiny.py OUT_DIR (bash scripts/test or scripts/run creates .venv)",
            file=sys.stderr,
        )
        return 2
    from bot.cli import main as cli_main
    from omost_engine.layout import Layout
    from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

    models = out / "models"
    llm = save_demo_llm(models / "tiny-llm-steered")
    sdxl = save_tiny_sdxl(models).folder
    turn = out / "turn-1"
    status = cli_main(
        [
            "compose",
            prompt,
            "--out",
            str(turn),
            "--llm",
            str(llm),
            "--allow-cpu",
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--seed",
            "7",
            "--device",
            "cpu",
            "--model",
            str(sdxl),
            "--size",
            "256x256",
            "--steps",
            str(args.steps),
        ]
    )
    if status != 0:
        return status
    regions = len(Layout.loads((turn / "layout.json").read_text(encoding="utf-8")).regions)
    print(f"\nThe demo wrote {turn.resolve()}:", file=sys.stderr)
    for name, what in [
        ("reply.md", "the LLM's reply (a canvas program)"),
        ("layout.json", f"the layout: the global description and {regions} regions"),
        ("image.png", "the rendered image"),
        ("masks.png", "the region masks, numbered"),
        ("conversation.json", "the conversation (omost-bot compose --continue)"),
    ]:
        print(f"  {name:<18} {what}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
