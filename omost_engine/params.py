"""Parameters of the two engine stages: each field's type, range, default and help, declared once.

The bot's slash-command options, the channel settings, the CLI flags, the Redis wire messages and the
layout file all take their ranges from these declarations (``omost_engine.declared``), so a value out
of range gets the same clear message everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field

from omost_engine.declared import Declared
from omost_engine.errors import OmostError

_WIDTH_HEIGHT = re.compile(
    r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*"
)  # 6 digits: never a number too long to read


def parse_width_height(text: str) -> tuple[int, int] | None:
    """``"WxH"`` (also ``W×H``, ``W X H``, spaces around) -> (W, H); None when it is not that shape.
    The one parser of sizes: callers check the range they allow."""
    match = _WIDTH_HEIGHT.fullmatch(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
MAX_SEED = 2**32 - 1
HR_MIN_SCALE = 1.05  # the original's threshold: smaller scales skip the HR fix (omost_engine.render.pipeline)

# Width x height presets (multiples of 64, about one megapixel, as SDXL was trained).
ASPECT_PRESETS: dict[str, tuple[int, int]] = {
    "portrait": (896, 1152),  # the original Omost app's default
    "square": (1024, 1024),
    "landscape": (1152, 896),
    "wide": (1344, 768),
    "tall": (768, 1344),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
}

Method = Literal["omost", "area"]
Overlap = Literal["overlay", "average"]

# The ranges, written once. Settings and limits that share a range use these types.
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="random seed")]
Steps = Annotated[int, Field(ge=1, le=100)]
Side = Annotated[int, Field(ge=256, le=2048, multiple_of=8)]
Cfg = Annotated[float, Field(ge=1.0, le=32.0)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
MaxNewTokens = Annotated[int, Field(ge=128, le=4096)]
DraftTokens = Annotated[int, Field(ge=1, le=100)]
# A zero global strength leaves pixels outside every region with no prediction at all.
GlobalStrength = Annotated[float, Field(ge=0.01, le=1.0)]
RegionStrength = Annotated[float, Field(ge=0.0, le=1.0)]
PromptText = Annotated[str, Field(max_length=1000)]
HrScale = Annotated[float, Field(ge=1.0, le=2.0)]
HrDenoise = Annotated[float, Field(ge=0.1, le=1.0)]
LatentDenoise = Annotated[float, Field(ge=0.5, le=1.0)]


class LLMParams(Declared):
    """Sampling settings of the Omost LLM (the original app's defaults)."""

    max_new_tokens: MaxNewTokens = Field(4096, description="LLM token budget")
    temperature: Temperature = Field(0.6, description="LLM temperature; 0 means greedy decoding")
    top_p: TopP = Field(0.9, description="LLM top_p")
    seed: Seed = Field(12345, description="LLM sampling seed")
    prompt_lookup: bool = Field(True, description="draft tokens from the conversation (faster edits)")
    prompt_lookup_tokens: DraftTokens = Field(20, description="longest prompt-lookup draft")
    grammar: bool = Field(True, description="constrain decoding to the canvas program grammar")


class RenderParams(Declared):
    """Settings of the regional SDXL render."""

    width: Side = Field(896, description="image width in pixels")
    height: Side = Field(1152, description="image height in pixels")
    steps: Steps = Field(25, description="diffusion steps")
    cfg: Cfg = Field(5.0, description="guidance scale")
    seed: Seed = Field(12345, description="noise seed")
    method: Method = Field(
        "omost", description="omost: regional attention (the original); area: ComfyUI-style area conditioning"
    )
    global_strength: GlobalStrength = Field(0.2, description="area method: weight of the global prompt")
    region_strength: RegionStrength = Field(0.8, description="area method: weight of the regions")
    overlap: Overlap = Field("average", description="area method: how overlapping regions combine")
    negative: PromptText = Field(DEFAULT_NEGATIVE_PROMPT, description="negative prompt")
    positive: PromptText = Field("", description="text added to every region (ComfyUI's positive input)")
    hr_scale: HrScale = Field(1.0, description="high-res fix upscale (1 = off)")
    hr_steps: Steps = Field(20, description="high-res fix steps")
    hr_denoise: HrDenoise = Field(0.4, description="high-res fix denoise")
    initial_latent_denoise: LatentDenoise | None = Field(
        None, description="start from the blurred colour sketch with this denoise (0.95..0.99); null = off"
    )

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the image delivered: the high-res pass's when it runs (the pipeline's rule)."""
        if self.hr_scale > HR_MIN_SCALE:
            return round(self.width * self.hr_scale / 64) * 64, round(self.height * self.hr_scale / 64) * 64
        return self.width, self.height

    @staticmethod
    def size_from_aspect(aspect: str) -> tuple[int, int]:
        """Parse a preset name or ``WxH`` into (width, height)."""
        key = aspect.strip().lower()
        if key in ASPECT_PRESETS:
            return ASPECT_PRESETS[key]
        size = parse_width_height(key)
        if size is not None:
            return size
        raise OmostError(
            f"size must be WIDTHxHEIGHT or one of {', '.join(ASPECT_PRESETS)}, not {aspect[:40]!r}",
            parameter="size",
            value=aspect,
            allowed=list(ASPECT_PRESETS) + ["WIDTHxHEIGHT"],
        )


def describe_overrides(
    before: RenderParams, after: RenderParams, given: dict[str, Any], *, source: str
) -> list[str]:
    """What options (``source`` "option") or flags ("flag") changed from a file's settings: one line each,
    e.g. ``steps: 40 -> 12 (--steps)``, for the new result's layout file."""
    lines = []
    for name in RenderParams.model_fields:
        old, new = getattr(before, name), getattr(after, name)
        by_size = name in ("width", "height") and "size" in given
        if old == new or not (name in given or by_size):
            continue
        flag = "size" if by_size else name
        how = f"--{flag.replace('_', '-')}" if source == "flag" else f"the {flag} option"
        lines.append(f"{name}: {old!r} -> {new!r} ({how})")
    return lines
