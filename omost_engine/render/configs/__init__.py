"""SDXL base 1.0's configurations and CLIP tokenizers, shipped with the package.

A single-file checkpoint (what model sites distribute) holds weights only; diffusers needs the
configs of the four parts and the two tokenizers beside it. They ship here, so such a file loads
offline with no extra flag: ``sdxl_base/`` has the configs (the public SDXL base 1.0 values), and
``clip_bpe_simple_vocab_16e6.txt.gz`` is CLIP's BPE vocabulary (OpenAI's, MIT licence, as the
``open_clip_torch`` package ships it), from which ``vocab.json`` and ``merges.txt`` of both
tokenizers are written once into a cache folder (``$OMOST_CACHE`` or ``~/.cache/omost-bot``).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SDXL_BASE = HERE / "sdxl_base"
CLIP_BPE = HERE / "clip_bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
# Merges CLIP uses from its BPE file: 49,408 tokens = 256 bytes + 256 end-of-word bytes + merges + 2 specials.
CLIP_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
VERSION = "sdxl-base-1.0-v1"


def byte_characters() -> list[str]:
    """CLIP's (and GPT-2's) reversible map of the 256 bytes to printable characters, in byte order of
    the printable ones first."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def clip_vocab_and_merges(bpe_gz: Path = CLIP_BPE) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (49,408 ids) and merge list from its BPE file."""
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 1 + CLIP_MERGES]
    characters = byte_characters()
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _cache_root() -> Path:
    base = os.environ.get("OMOST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omost-bot")
    return Path(base)


def sdxl_base_config_dir(cache: Path | None = None) -> Path:
    """A complete SDXL base config folder (model_index.json, the four configs, the scheduler config,
    both tokenizers) for ``from_single_file(config=...)``; written once, then reused."""
    target = (cache or _cache_root()) / VERSION
    if (target / "tokenizer_2" / "merges.txt").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=VERSION + ".", dir=target.parent))
    try:
        shutil.copytree(SDXL_BASE, building, dirs_exist_ok=True)
        vocab, merges = clip_vocab_and_merges()
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
            folder = building / name
            (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
            (folder / "special_tokens_map.json").write_text(
                json.dumps({**special, "pad_token": pad}), encoding="utf-8"
            )
        try:
            building.rename(target)
        except OSError:  # another process finished first
            if not (target / "tokenizer_2" / "merges.txt").is_file():
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return target
