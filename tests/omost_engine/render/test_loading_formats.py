"""Loading SDXL as users have it: shipped base configs, fp16 variants, dtypes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omost_engine.errors import OmostError
from omost_engine.memory import cpu_supports_bf16
from omost_engine.render.configs import sdxl_base_config_dir
from omost_engine.render.loading import LARGE_MODEL_BYTES, dtypes_for, load_components, parse_dtype
from omost_engine.testing.tiny_sdxl import TinySDXLPaths

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_configs_are_sdxl_base() -> None:
    """Parameter counts of SDXL base 1.0's four parts, built from the shipped configs (no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = sdxl_base_config_dir()
    counts = {}
    with torch.device("meta"):
        for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            counts[name] = sum(
                p.numel() for p in cls.from_config(cls.load_config(folder, subfolder=name)).parameters()
            )
        for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            model = cls(CLIPTextConfig.from_pretrained(folder, subfolder=name))
            counts[name] = sum(p.numel() for p in model.parameters())
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "scheduler", "tokenizer", "tokenizer_2"}
    assert len(json.loads((folder / "tokenizer_2" / "vocab.json").read_text())) == 49408


def test_the_fp16_variant_is_preferred_where_there_is_one(tmp_path: Path, tiny_sdxl: TinySDXLPaths) -> None:
    folder = tmp_path / "with-variant"
    shutil.copytree(tiny_sdxl.folder, folder)
    plain = load_components(str(folder))
    marked = plain.unet
    with torch.no_grad():
        marked.conv_in.weight.fill_(0.25)
    marked.save_pretrained(folder / "unet", variant="fp16")
    preferred = load_components(str(folder))
    assert torch.all(preferred.unet.conv_in.weight == 0.25)
    assert not torch.all(
        load_components(str(tiny_sdxl.folder)).unet.conv_in.weight == 0.25
    )  # no variant: plain


def test_dtypes_per_device_and_size(tmp_path: Path, tiny_sdxl: TinySDXLPaths) -> None:
    cpu = torch.device("cpu")
    assert dtypes_for(cpu, str(tiny_sdxl.folder)) == (torch.float32, torch.float32)  # a small model
    big = tmp_path / "big.safetensors"
    with big.open("wb") as handle:  # sparse: the size is what counts
        handle.truncate(LARGE_MODEL_BYTES)
    large = (torch.bfloat16, torch.bfloat16) if cpu_supports_bf16() else (torch.float32, torch.float32)
    assert dtypes_for(cpu, str(big)) == large
    assert dtypes_for(cpu, "SG161222/RealVisXL_V4.0") == large
    assert dtypes_for(cpu, str(tiny_sdxl.folder), torch.bfloat16) == (torch.bfloat16, torch.bfloat16)
    assert dtypes_for(cpu, str(big), torch.float32) == (torch.float32, torch.float32)
    assert dtypes_for(cpu, None, torch.float16) == (torch.float16, torch.bfloat16)  # never an fp16 VAE
    assert parse_dtype("auto") is None and parse_dtype("BF16") == torch.bfloat16
    with pytest.raises(OmostError, match="unknown dtype"):
        parse_dtype("int4")


def test_render_with_an_uncached_hub_model_is_one_line_without_library_noise(tmp_path: Path) -> None:
    """issue 10, items 17 and 18: the CLI says in one line that the model is not cached and how to get
    it, and neither bitsandbytes' 'pip install kernels' nor library warnings reach the output."""
    layout = tmp_path / "layout.json"
    program = (ROOT / "tests" / "fixtures" / "goldens" / "03_minimal_global_only.py").read_text()
    from omost_engine.interpreter import interpret

    layout.write_text(interpret(program).process().dumps())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("PYTHONWARNINGS", None)  # Python's default filters, as a user has them
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "render",
            str(layout),
            "--out",
            str(tmp_path / "out"),
            "--model",
            "nobody/uncached-sdxl",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "omost-bot render: model nobody/uncached-sdxl is not in the local Hugging Face cache"
    )
    assert "`hf download nobody/uncached-sdxl`" in lines[0]
