"""Real architectures with random weights: an SDXL step with and without regions, the offload
mode's memory, and an 8B-architecture 4-bit LLM's tokens/s with and without prompt lookup.

* SDXL: the shipped SDXL base configuration (UNet 2.57B parameters, random weights shared through
  one buffer, so it builds in a second; the real CLIP tokenizers; the text encoders at their real
  widths with ``--text-layers`` layers) renders at ``--size``. Seconds per diffusion step (the time
  between step callbacks, fastest of the steps after the first) for golden 01's global condition
  alone (no regions), with its four regions under omost's regional attention and under area
  conditioning; ratios to the step without regions.
* Memory in the 8 GB offload mode (the LLM and SDXL take turns on the accelerator): on a GPU the
  peak of ``torch.cuda.max_memory_allocated`` over an LLM turn, a render and the next LLM turn; on a
  CPU (no accelerator to measure) the weight bytes each stage puts on the accelerator, for the real
  sizes (8B 4-bit Llama-3, SDXL in fp16).
* LLM: the Llama-3 architecture with the real tokenizer (128,256 tokens) and the published 4-bit
  quantisation (bitsandbytes NF4), ``--llm-hidden`` / ``--llm-layers`` (4096 / 32 is the 8B model),
  made to write golden 02 (the dinosaur edit, golden 01 in the history) by a logits processor, with the
  canvas grammar, with and without prompt lookup; tokens per second and the ratio.

On a CPU the defaults are reduced (256x256, 2 text layers, LLM hidden 1024 x 2 layers) and the run
takes a few minutes; on a GPU use ``--size 896x1152 --steps 25 --llm-hidden 4096 --llm-layers 32
--text-layers 32``.

    python bench/bench_real.py [--device cuda] [--size 256x256] [--steps 3] [--llm-hidden 1024] [--llm-layers 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from omost_engine.noise import quiet_library_noise

quiet_library_noise()
logging.getLogger("diffusers").setLevel(logging.ERROR)
logging.getLogger("transformers").setLevel(logging.ERROR)

GOLDENS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "goldens"
EDIT_REQUEST = "change the dragon to a dinosaur"


def _golden(case: str) -> str:
    (path,) = GOLDENS.glob(f"{case}_*.json")
    return json.loads(path.read_text())["bot_response"]


def sdxl_steps(args: argparse.Namespace) -> None:
    from omost_engine.layout import Layout
    from omost_engine.memory import ModelManager
    from omost_engine.params import RenderParams
    from omost_engine.render.pipeline import RegionalPipeline
    from omost_engine.reply import parse_reply
    from omost_engine.testing.real_formats import real_sdxl_components

    width, height = (int(v) for v in args.size.lower().split("x"))
    dtype = torch.float16 if args.device == "cuda" else torch.bfloat16
    started = time.perf_counter()
    components = real_sdxl_components(text_layers=args.text_layers, dtype=dtype)
    if args.device != "cpu":
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            setattr(components, part, getattr(components, part).to(args.device))
    pipeline = RegionalPipeline(components, memory=ModelManager(device=args.device, mode="resident"))
    print(
        f"SDXL base configuration, random weights, {width}x{height}, {dtype}, {args.device}, "
        f"text encoders {args.text_layers} layers (built in {time.perf_counter() - started:.1f} s)"
    )
    dragon = parse_reply(_golden("01"))
    cases = {
        "no regions (global only)": (Layout(conditions=dragon.conditions[:1]), "omost"),
        f"omost, {len(dragon.conditions) - 1} regions": (dragon, "omost"),
        f"area, {len(dragon.conditions) - 1} regions": (dragon, "area"),
    }
    results: dict[str, tuple[float, float]] = {}
    for label, (layout, method) in cases.items():
        stamps: list[tuple[float, float]] = []  # (wall, process CPU time) at each step's callback

        def on_progress(progress: object, stamps: list[tuple[float, float]] = stamps) -> None:
            if getattr(progress, "stage", "") == "render":
                stamps.append((time.perf_counter(), time.process_time()))

        params = RenderParams(width=width, height=height, steps=args.steps, method=method, seed=1)
        whole = time.perf_counter()
        pipeline(layout.conditions, params, on_progress=on_progress)
        whole = time.perf_counter() - whole
        gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:], strict=False)]
        results[label] = min(gaps) if gaps else (whole / args.steps, float("nan"))
    base_wall, base_cpu = next(iter(results.values()))
    print("  seconds a step (fastest step after the first): wall, and CPU time of all threads")
    for label, (wall, cpu) in results.items():
        print(
            f"  {label:28} wall {wall:7.2f} s x{wall / base_wall:.2f}   cpu {cpu:7.2f} s x{cpu / base_cpu:.2f}"
        )


def _linear_and_other(
    hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int
) -> tuple[int, int]:
    head = hidden // heads
    per_layer = hidden * hidden * 2 + hidden * head * kv_heads * 2 + 3 * hidden * intermediate
    return per_layer * layers, 2 * vocab * hidden + (2 * layers + 1) * hidden


def memory_table() -> None:
    """Weight bytes on the accelerator at each stage of the offload mode, real sizes."""
    linear, other = _linear_and_other(4096, 14336, 32, 32, 8, 128256)
    llm = (
        linear // 2 + linear // 64 * 4 + other * 2
    )  # NF4: half a byte a weight + an fp32 absmax per 64; rest bf16
    parts = {
        "text encoders": (123_060_480 + 694_659_840) * 2,
        "unet": 2_567_463_684 * 2,
        "vae": 83_653_863 * 2,
    }
    print("offload mode, weights on the accelerator per stage (no GPU here: computed from the real shapes):")
    stages = {
        "LLM turn (8B, 4-bit)": llm,
        "prompt encoding": parts["text encoders"],
        "diffusion (UNet fp16)": parts["unet"],
        "decode (VAE)": parts["vae"],
    }
    for stage, size in stages.items():
        print(f"  {stage:28} {size / 2**30:6.2f} GiB")
    print(f"  largest stage: {max(stages.values()) / 2**30:.2f} GiB of weights (activations come on top)")


def gpu_memory(args: argparse.Namespace) -> None:
    """On a GPU: the LLM and SDXL share one offload-mode ModelManager; peak allocated memory over an LLM
    turn, a render, and another LLM turn (not run here: no GPU on the development machines)."""
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.transformers_backend import TransformersBackend
    from omost_engine.memory import ModelManager
    from omost_engine.params import LLMParams, RenderParams
    from omost_engine.render.pipeline import RegionalPipeline
    from omost_engine.reply import parse_reply
    from omost_engine.testing.real_formats import ensure_real_formats, real_sdxl_components, save_real_llm

    formats, why = ensure_real_formats(fetch=True)
    if formats is None:
        print(f"offload memory: skipped ({why})")
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    manager = ModelManager(device=args.device, mode="offload")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_real_llm(
            Path(tmp) / "llm",
            "llama-3",
            formats=formats,
            quantization="4bit",
            hidden_size=args.llm_hidden,
            layers=args.llm_layers,
            heads=max(1, args.llm_hidden // 128),
            kv_heads=max(1, args.llm_hidden // 512),
            intermediate_size=args.llm_hidden * 7 // 2,
        )
        backend = TransformersBackend(
            LLMLoader(manager=manager, allow_cpu=True).get(str(folder)), manager=manager
        )
        components = real_sdxl_components(text_layers=args.text_layers, dtype=torch.float16)
        pipeline = RegionalPipeline(components, memory=manager)
        messages = [{"role": "user", "content": "a dragon"}]
        torch.cuda.reset_peak_memory_stats()
        peaks = []
        backend.generate(messages, LLMParams(max_new_tokens=128, temperature=0.0))
        peaks.append(torch.cuda.max_memory_allocated())
        pipeline(
            parse_reply(_golden("01")).conditions, RenderParams(width=width, height=height, steps=args.steps)
        )
        peaks.append(torch.cuda.max_memory_allocated())
        backend.generate(messages, LLMParams(max_new_tokens=128, temperature=0.0))
        peaks.append(torch.cuda.max_memory_allocated())
    print(
        "offload mode on the GPU, peak allocated after: LLM turn {:.2f} GiB, render {:.2f} GiB, "
        "LLM turn {:.2f} GiB".format(*(p / 2**30 for p in peaks))
    )


def llm_tokens_per_second(args: argparse.Namespace) -> None:
    from omost_engine.llm.models import LLMLoader
    from omost_engine.llm.system_prompt import SYSTEM_PROMPT
    from omost_engine.llm.transformers_backend import TransformersBackend
    from omost_engine.params import LLMParams
    from omost_engine.testing.real_formats import ensure_real_formats, save_real_llm
    from omost_engine.testing.tiny_llm import forced_reply_processor

    formats, why = ensure_real_formats(fetch=True)
    if formats is None:
        print(f"LLM: skipped ({why})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = save_real_llm(
            Path(tmp) / "llama-3-4bit",
            "llama-3",
            formats=formats,
            quantization="4bit",
            hidden_size=args.llm_hidden,
            layers=args.llm_layers,
            heads=max(1, args.llm_hidden // 128),
            kv_heads=max(1, args.llm_hidden // 512),
            intermediate_size=args.llm_hidden * 7 // 2,
        )
        llm = LLMLoader(allow_cpu=True).get(str(folder))
        parameters = sum(p.numel() for p in llm.model.parameters())
        first, edit = _golden("01"), _golden("02")
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "generate an image of the fierce battle of warriors and the dragon"},
            {"role": "assistant", "content": first},
            {"role": "user", "content": EDIT_REQUEST},
        ]
        print(
            f"Llama-3 architecture, real tokenizer, 4-bit NF4, hidden {args.llm_hidden} x {args.llm_layers} layers "
            f"({parameters / 1e6:.0f}M stored parameters; built in {time.perf_counter() - started:.1f} s), {args.device}, "
            f"writing golden 02 after golden 01 with the canvas grammar:"
        )
        rates: dict[str, float] = {}
        for label, lookup in (("plain", False), ("prompt lookup K=20", True)):
            backend = TransformersBackend(
                llm,
                reuse_prompt_state=False,
                logits_processors=[forced_reply_processor(llm.tokenizer, edit, "<|eot_id|>")],
            )
            params = LLMParams(max_new_tokens=args.llm_tokens, temperature=0.0, prompt_lookup=lookup)
            started = time.perf_counter()
            generation = backend.generate(messages, params)
            seconds = time.perf_counter() - started
            rates[label] = generation.tokens / seconds
            print(
                f"  {label:20} {generation.tokens} tokens in {seconds:6.1f} s = {rates[label]:6.1f} tokens/s, "
                f"{generation.tokens / max(1, generation.forward_passes):.2f} tokens a pass"
            )
        print(f"  prompt lookup: x{rates['prompt lookup K=20'] / rates['plain']:.2f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the SDXL render")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--text-layers", type=int, default=2, help="CLIP layers (12 and 32 are the real ones)"
    )
    parser.add_argument("--llm-hidden", type=int, default=1024, help="4096 is the 8B model")
    parser.add_argument("--llm-layers", type=int, default=2, help="32 is the 8B model")
    parser.add_argument("--llm-tokens", type=int, default=4096, help="token budget of the LLM reply")
    parser.add_argument("--skip", nargs="*", default=(), choices=("sdxl", "memory", "llm"))
    args = parser.parse_args()
    if "sdxl" not in args.skip:
        sdxl_steps(args)
    if "memory" not in args.skip:
        memory_table() if args.device == "cpu" else gpu_memory(args)
    if "llm" not in args.skip:
        llm_tokens_per_second(args)


if __name__ == "__main__":
    main()
