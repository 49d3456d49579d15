"""Parameters of the two engine stages, with their ranges and defaults, validated in one place.

The bot's slash-command options, the CLI flags and the layout JSON all go through these
classes, so a value out of range gets the same clear message everywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Self

from omost_engine.errors import OmostError

_WIDTH_HEIGHT = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")


def parse_width_height(text: str) -> tuple[int, int] | None:
    """``"WxH"`` (also ``W×H``, ``W X H``, spaces around) -> (W, H); None when it is not that shape.
    The one parser of sizes: callers check the range they allow."""
    match = _WIDTH_HEIGHT.fullmatch(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
MAX_SEED = 2**32 - 1

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


def _check_range(name: str, value: Any, low: float, high: float, *, integer: bool) -> None:
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and math.isnan(value)):
        raise OmostError(
            f"{name} must be {kind} from {low:g} to {high:g}, not {value!r}",
            parameter=name, value=value, allowed=f"{low:g}..{high:g}",
        )
    if not low <= value <= high:
        raise OmostError(
            f"{name} must be from {low:g} to {high:g}, not {value!r}",
            parameter=name, value=value, allowed=f"{low:g}..{high:g}",
        )


class _Params:
    """Shared helpers: a dict round trip that ignores unknown keys and validates."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names}).validated()  # type: ignore[attr-defined]

    def replace(self, **changes: Any) -> Self:
        return replace(self, **changes).validated()  # type: ignore[type-var,attr-defined]


@dataclass(frozen=True, kw_only=True)
class LLMParams(_Params):
    """Sampling settings of the Omost LLM (the original app's defaults)."""

    max_new_tokens: int = 4096
    temperature: float = 0.6  # 0 means greedy decoding
    top_p: float = 0.9
    seed: int = 12345
    prompt_lookup: bool = True  # draft tokens from the conversation (issue: faster LLM step)
    prompt_lookup_tokens: int = 20
    grammar: bool = True  # constrain decoding to the canvas program grammar

    def validated(self) -> Self:
        _check_range("max_new_tokens", self.max_new_tokens, 128, 4096, integer=True)
        _check_range("temperature", self.temperature, 0.0, 2.0, integer=False)
        _check_range("top_p", self.top_p, 0.0, 1.0, integer=False)
        _check_range("seed", self.seed, 0, MAX_SEED, integer=True)
        _check_range("prompt_lookup_tokens", self.prompt_lookup_tokens, 1, 100, integer=True)
        return self


@dataclass(frozen=True, kw_only=True)
class RenderParams(_Params):
    """Settings of the regional SDXL render."""

    width: int = 896
    height: int = 1152
    steps: int = 25
    cfg: float = 5.0
    seed: int = 12345
    method: Method = "omost"
    global_strength: float = 0.2  # method "area" only
    region_strength: float = 0.8  # method "area" only
    overlap: Overlap = "average"  # method "area" only
    negative: str = DEFAULT_NEGATIVE_PROMPT
    positive: str = ""  # extra text added to every condition (ComfyUI's `positive` input)
    hr_scale: float = 1.0  # HR fix: 1 (off) to 2
    hr_steps: int = 20
    hr_denoise: float = 0.4
    initial_latent_denoise: float | None = None  # start from the colour sketch: 0.95..0.99, None = off

    def validated(self) -> Self:
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_range(name, value, 256, 2048, integer=True)
            if value % 8:
                raise OmostError(
                    f"{name} must be a multiple of 8, not {value}", parameter=name, value=value,
                    allowed="multiples of 8 from 256 to 2048",
                )
        _check_range("steps", self.steps, 1, 100, integer=True)
        _check_range("cfg", self.cfg, 1.0, 32.0, integer=False)
        _check_range("seed", self.seed, 0, MAX_SEED, integer=True)
        if self.method not in ("omost", "area"):
            raise OmostError(f"method must be omost or area, not {self.method!r}",
                             parameter="method", value=self.method, allowed=("omost", "area"))
        if self.overlap not in ("overlay", "average"):
            raise OmostError(f"overlap must be overlay or average, not {self.overlap!r}",
                             parameter="overlap", value=self.overlap, allowed=("overlay", "average"))
        # A zero global strength leaves pixels outside every region with no prediction at all.
        _check_range("global_strength", self.global_strength, 0.01, 1.0, integer=False)
        _check_range("region_strength", self.region_strength, 0.0, 1.0, integer=False)
        _check_range("hr_scale", self.hr_scale, 1.0, 2.0, integer=False)
        _check_range("hr_steps", self.hr_steps, 1, 100, integer=True)
        _check_range("hr_denoise", self.hr_denoise, 0.1, 1.0, integer=False)
        if self.initial_latent_denoise is not None:
            _check_range("initial_latent_denoise", self.initial_latent_denoise, 0.5, 1.0, integer=False)
        for name in ("negative", "positive"):
            text = getattr(self, name)
            if not isinstance(text, str) or len(text) > 1000:
                raise OmostError(f"{name} must be text of at most 1000 characters",
                                 parameter=name, value=text, allowed="text up to 1000 characters")
        return self

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
            f"size must be WIDTHxHEIGHT or one of {', '.join(ASPECT_PRESETS)}, not {aspect!r}",
            parameter="size", value=aspect, allowed=list(ASPECT_PRESETS) + ["WIDTHxHEIGHT"],
        )
