"""Per-guild and per-channel defaults and limits, and turning a user's options into validated parameters.

Resolution order: the engine defaults and bot config, then the guild's settings, then the channel's.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from bot.config import BotConfig
from bot.storage import Storage
from omost_engine.errors import OmostError
from omost_engine.params import LLMParams, RenderParams

Scope = Literal["guild", "channel"]
Kind = Literal["bool", "int", "float", "text", "choice", "size", "channels"]


@dataclass(frozen=True, kw_only=True)
class SettingSpec:
    kind: Kind
    help: str
    scopes: tuple[Scope, ...] = ("guild", "channel")
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()


# Every setting an admin can change with /omost settings, as data.
SETTINGS: dict[str, SettingSpec] = {
    "allowed_channels": SettingSpec(
        kind="channels", scopes=("guild",), help="channels where /omost works (mentions or ids), or 'all'"
    ),
    "unfiltered": SettingSpec(kind="bool", help="allow unfiltered LLMs (e.g. dolphin) here"),
    "llm": SettingSpec(kind="text", help="default LLM id"),
    "temperature": SettingSpec(kind="float", low=0, high=2, help="default LLM temperature"),
    "top_p": SettingSpec(kind="float", low=0, high=1, help="default LLM top_p"),
    "max_new_tokens": SettingSpec(kind="int", low=128, high=4096, help="default LLM token budget"),
    "prompt_lookup": SettingSpec(kind="bool", help="LLM drafts tokens from the conversation (faster edits)"),
    "prompt_lookup_tokens": SettingSpec(kind="int", low=1, high=100, help="longest prompt-lookup draft"),
    "grammar": SettingSpec(kind="bool", help="LLM output held to the canvas-program grammar (never invalid)"),
    "size": SettingSpec(kind="size", help="default image size: a preset or WIDTHxHEIGHT"),
    "steps": SettingSpec(kind="int", low=1, high=100, help="default diffusion steps"),
    "cfg": SettingSpec(kind="float", low=1, high=32, help="default guidance scale"),
    "method": SettingSpec(kind="choice", choices=("omost", "area"), help="default regional method"),
    "negative": SettingSpec(kind="text", help="default negative prompt"),
    "max_steps": SettingSpec(kind="int", low=1, high=100, help="most steps a user may ask for"),
    "max_megapixels": SettingSpec(kind="float", low=0.06, high=4.2, help="largest image a user may ask for"),
    "max_queued_per_user": SettingSpec(kind="int", low=1, high=1000, help="jobs one user may have waiting"),
    "rate_limit": SettingSpec(kind="int", low=1, high=10_000, help="jobs one user may submit per window"),
}

# Decoding switches (speed and validity, not the composition): every job takes them from the channel's settings,
# refinements of older results included.
DECODING_SETTINGS = ("prompt_lookup", "prompt_lookup_tokens", "grammar")

_CHANNEL_ID = re.compile(r"<#(\d+)>|(\d{5,})")


def parse_setting(key: str, text: str) -> Any:
    """A setting's value from what an admin typed; one OmostError naming what is allowed."""
    spec = SETTINGS.get(key)
    if spec is None:
        raise OmostError(f"unknown setting {key!r}", parameter="key", value=key, allowed=list(SETTINGS))
    text = text.strip()
    if spec.kind == "bool":
        if text.lower() in ("true", "yes", "on", "1"):
            return True
        if text.lower() in ("false", "no", "off", "0"):
            return False
        raise OmostError(
            f"{key} must be true or false, not {text!r}", parameter=key, value=text, allowed=("true", "false")
        )
    if spec.kind in ("int", "float"):
        try:
            number: float = int(text) if spec.kind == "int" else float(text)
        except ValueError:
            number = float("nan")
        if not spec.low <= number <= spec.high:  # nan fails too
            kind = "a whole number" if spec.kind == "int" else "a number"
            raise OmostError(
                f"{key} must be {kind} from {spec.low:g} to {spec.high:g}, not {text!r}",
                parameter=key,
                value=text,
                allowed=f"{spec.low:g}..{spec.high:g}",
            )
        return number
    if spec.kind == "choice":
        if text.lower() not in spec.choices:
            raise OmostError(
                f"{key} must be one of {', '.join(spec.choices)}, not {text!r}",
                parameter=key,
                value=text,
                allowed=spec.choices,
            )
        return text.lower()
    if spec.kind == "size":
        RenderParams().replace(**_size_fields(text))  # validates the preset / WxH and its range
        return text.lower()
    if spec.kind == "channels":
        if text.lower() == "all":
            return []
        ids = [int(a or b) for a, b in _CHANNEL_ID.findall(text)]
        if not ids:
            raise OmostError(
                f"allowed_channels must be channel mentions or ids, or 'all', not {text!r}",
                parameter=key,
                value=text,
                allowed="#channel mentions, channel ids, all",
            )
        return ids
    if not text or len(text) > 1000:
        raise OmostError(
            f"{key} must be text of 1 to 1000 characters",
            parameter=key,
            value=text,
            allowed="1..1000 characters",
        )
    return text


def _size_fields(size: str) -> dict[str, int]:
    width, height = RenderParams.size_from_aspect(size)
    return {"width": width, "height": height}


def is_unfiltered_model(llm: str | None) -> bool:
    """Whether an LLM id names an unfiltered model (allowed only where an admin enabled ``unfiltered``).

    The engine's model table (``omost_engine.llm.models.is_unfiltered``) marks the known ones; any id
    containing "dolphin" (a local copy, a fine-tune) counts as unfiltered too.
    """
    if llm is None:
        return False
    try:
        models = importlib.import_module("omost_engine.llm.models")
    except ImportError:  # the LLM package is optional for the bot's own tests
        models = None
    marker = getattr(models, "is_unfiltered", None)
    return (callable(marker) and bool(marker(llm))) or "dolphin" in llm.lower()


def known_llms() -> list[tuple[str, str]]:
    """(hub id, note) of the LLMs the engine knows, for the ``llm`` option's suggestions."""
    try:
        models = importlib.import_module("omost_engine.llm.models")
    except ImportError:
        return []
    return [(model.repo, model.note) for model in getattr(models, "KNOWN_MODELS", ())]


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What applies in one channel: defaults, limits and access."""

    values: dict[str, Any]  # the merged settings (config <- guild <- channel)
    llm: str | None
    llm_params: LLMParams
    render_params: RenderParams
    max_steps: int
    max_megapixels: float
    allowed_channels: tuple[int, ...]
    unfiltered: bool
    max_queued_per_user: int
    rate_limit: int
    # Whether an explicit LLM choice may name a local model: not when the server has an LLM endpoint
    # and no local LLM configured (OMOST_LLM_ENDPOINT without OMOST_LLM).
    local_llms: bool = True

    def channel_allowed(self, channel_id: int, parent_id: int | None = None) -> bool:
        if not self.allowed_channels:
            return True
        return channel_id in self.allowed_channels or (
            parent_id is not None and parent_id in self.allowed_channels
        )


async def resolve_policy(
    storage: Storage, config: BotConfig, *, guild_id: int | None, channel_id: int
) -> Policy:
    values: dict[str, Any] = {
        # None: the engine's default, which is the endpoint when one is configured (engine_factory). The
        # configured local LLM must not be written into every job, or it would override the endpoint.
        "llm": None if config.llm_endpoint else config.llm,
        "max_steps": 100,
        "max_megapixels": 4.2,
        "allowed_channels": [],
        "unfiltered": False,
        "max_queued_per_user": config.max_queued_per_user,
        "rate_limit": config.rate_limit,
    }
    if guild_id is not None:
        values.update(await storage.settings("guild", guild_id))
    values.update(
        {
            k: v
            for k, v in (await storage.settings("channel", channel_id)).items()
            if "channel" in SETTINGS[k].scopes
        }
    )
    llm_fields = {k: values[k] for k in ("temperature", "top_p", "max_new_tokens", *DECODING_SETTINGS) if k in values}
    render_fields: dict[str, Any] = {
        k: values[k] for k in ("steps", "cfg", "method", "negative") if k in values
    }
    if "size" in values:
        render_fields.update(_size_fields(values["size"]))
    return Policy(
        values=values,
        llm=values["llm"],
        llm_params=LLMParams(**llm_fields).validated(),
        render_params=RenderParams(**render_fields).validated(),
        max_steps=int(values["max_steps"]),
        max_megapixels=float(values["max_megapixels"]),
        allowed_channels=tuple(values["allowed_channels"]),
        unfiltered=bool(values["unfiltered"]),
        max_queued_per_user=int(values["max_queued_per_user"]),
        rate_limit=int(values["rate_limit"]),
        local_llms=config.llm_endpoint is None or config.llm is not None,
    )


def with_decoding(policy: Policy, params: LLMParams) -> LLMParams:
    """``params`` (e.g. those of the result being refined) with the channel's current decoding switches."""
    return params.replace(**{k: getattr(policy.llm_params, k) for k in DECODING_SETTINGS})


def require_llm_allowed(policy: Policy, llm: str | None) -> None:
    """Unfiltered LLMs only where an admin enabled them; local models past an LLM endpoint only where the
    server allows local models (both checked again for every refinement)."""
    if llm is not None and not policy.local_llms and not llm.startswith(("http://", "https://")):
        raise OmostError(
            f"this bot uses its LLM endpoint, and local models such as {llm!r} are not enabled on this server "
            "(its operator enables them by also setting OMOST_LLM); leave the llm option (and the llm "
            "setting) empty",
            parameter="llm",
            value=llm,
            allowed="the server's LLM endpoint (no llm option)",
        )
    if is_unfiltered_model(llm) and not policy.unfiltered:
        raise OmostError(
            f"the model {llm!r} is unfiltered; an admin has to enable it here first "
            "(/omost settings set unfiltered true)",
            parameter="llm",
            value=llm,
        )


# User options that go to LLMParams / RenderParams unchanged.
LLM_OPTIONS = ("seed", "temperature", "top_p", "max_new_tokens")
RENDER_OPTIONS = (
    "seed",
    "steps",
    "cfg",
    "method",
    "global_strength",
    "region_strength",
    "overlap",
    "negative",
    "positive",
)


def build_params(
    policy: Policy, options: dict[str, Any], *, seed: int
) -> tuple[str | None, LLMParams, RenderParams]:
    """The (llm, LLMParams, RenderParams) of a request: the policy's defaults, the user's options over them,
    validated and held to the channel's limits. ``seed`` is used where the user gave none."""
    options = {k: v for k, v in options.items() if v is not None}
    options.setdefault("seed", seed)
    chosen = options.get("llm")
    if isinstance(chosen, str) and chosen.strip().lower().startswith(("http://", "https://")):
        # An endpoint URL is the operator's to configure: a user's would make the bot call any server.
        raise OmostError(
            "the llm option takes a model name or hub id, not a URL",
            parameter="llm",
            value=chosen,
            allowed="a model name or hub id",
        )
    llm = chosen or policy.llm
    require_llm_allowed(policy, llm)
    llm_params = policy.llm_params.replace(**{k: options[k] for k in LLM_OPTIONS if k in options})
    render_changes = {k: options[k] for k in RENDER_OPTIONS if k in options}
    if "size" in options:
        render_changes.update(_size_fields(options["size"]))
    if "steps" not in options:  # a default above the channel's limit is lowered, not held against the user
        render_changes["steps"] = min(policy.render_params.steps, policy.max_steps)
    render_params = policy.render_params.replace(**render_changes)
    if render_params.steps > policy.max_steps:
        raise OmostError(
            f"steps must be at most {policy.max_steps} here, not {render_params.steps}",
            parameter="steps",
            value=render_params.steps,
            allowed=f"1..{policy.max_steps}",
        )
    megapixels = render_params.width * render_params.height / 1e6
    if megapixels > policy.max_megapixels + 1e-9:
        raise OmostError(
            f"size {render_params.width}x{render_params.height} is {megapixels:.2f} megapixels; at most "
            f"{policy.max_megapixels:g} are allowed here",
            parameter="size",
            value=f"{render_params.width}x{render_params.height}",
            allowed=f"up to {policy.max_megapixels:g} MP",
        )
    return llm, llm_params, render_params
