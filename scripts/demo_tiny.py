"""A complete CPU run of the pipeline on tiny random models built in code: LLM -> canvas -> render.

    python scripts/demo_tiny.py OUT_DIR [PROMPT]

It saves a tiny Llama-3-style LLM and a tiny SDXL under OUT_DIR/models, then runs
``omost-bot compose`` with them, so every real code path runs (model loading from folders,
grammar-constrained decoding, the safe interpreter, regional rendering). The random LLM writes a
random but always valid canvas program (the grammar allows nothing else) and the tiny SDXL paints
noise-like pictures: it shows the mechanics, not image quality.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    prompt = argv[1] if len(argv) > 1 else "a dragon fighting warriors"

    from bot.cli import main as cli_main
    from omost_engine.testing.tiny_llm import save_tiny_llm
    from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

    models = out / "models"
    llm = models / "tiny-llm"
    if not (llm / "config.json").exists():
        save_tiny_llm(llm)
    sdxl = save_tiny_sdxl(models).folder
    return cli_main([
        "compose", prompt, "--out", str(out / "turn-1"), "--llm", str(llm), "--allow-cpu",
        "--max-new-tokens", "1024", "--seed", "7",
        "--model", str(sdxl), "--size", "256x256", "--steps", "4",
    ])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
