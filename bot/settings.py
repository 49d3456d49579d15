"""Per-guild and per-channel defaults and limits, and turning a user's options into validated parameters.

Resolution order: the engine defaults and bot config, then the guild's settings, then the channel's.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import Field
from pydantic.config import JsonDict

from bot.config import UPSCALE_ALLOWED, BotConfig, QueuedPerUser, RateLimit, UpscaleScale
from bot.storage import Storage
from omost_engine.declared import Declared, allowed_text, check_value, choices, field_kind, fields_of
from omost_engine.errors import OmostError
from omost_engine.params import (
    Cfg,
    DraftTokens,
    LLMParams,
    MaxNewTokens,
    Method,
    PromptText,
    RenderParams,
    Steps,
    Temperature,
    TopP,
)
from omost_engine.variations import DEFAULT_UPSCALE, MAX_COUNT, check_count

Scope = Literal["guild", "channel"]
ALL_SCOPES: tuple[Scope, ...] = ("guild", "channel")
Kind = Literal["bool", "int", "float", "text", "choice", "size", "channels"]
KINDS: dict[object, Kind] = {kind: kind for kind in get_args(Kind)}

GUILD_ONLY: JsonDict = {"scopes": ["guild"]}
SettingText = Annotated[PromptText, Field(min_length=1)]
Megapixels = Annotated[float, Field(ge=0.06, le=4.2)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]  # images in one job: 1, or variations in a grid
EditorAccess = Literal["owner", "anyone"]


class ServerSettings(Declared):
    """Every setting an admin can change with /omost settings: its type and range (shared with the
    parameter it sets), its help. ``None``: not set here (the bot's default applies)."""

    allowed_channels: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        max_length=100,
        description="channels where /omost works (mentions or ids), or 'all'",
        json_schema_extra={**GUILD_ONLY, "allowed": "channel mentions or ids, or all"},
    )
    unfiltered: bool | None = Field(None, description="allow unfiltered LLMs (e.g. dolphin) here")
    llm: SettingText | None = Field(None, description="default LLM id")
    temperature: Temperature | None = Field(None, description="default LLM temperature")
    top_p: TopP | None = Field(None, description="default LLM top_p")
    max_new_tokens: MaxNewTokens | None = Field(None, description="default LLM token budget")
    prompt_lookup: bool | None = Field(
        None, description="LLM drafts tokens from the conversation (faster edits)"
    )
    prompt_lookup_tokens: DraftTokens | None = Field(None, description="longest prompt-lookup draft")
    grammar: bool | None = Field(
        None, description="LLM output held to the canvas-program grammar (never invalid)"
    )
    size: Annotated[str, Field(max_length=20)] | None = Field(
        None,
        description="default image size: a preset or WIDTHxHEIGHT",
        json_schema_extra={"kind": "size", "allowed": "a preset (portrait, square, ...) or WIDTHxHEIGHT"},
    )
    steps: Steps | None = Field(None, description="default diffusion steps")
    cfg: Cfg | None = Field(None, description="default guidance scale")
    method: Method | None = Field(None, description="default regional method")
    negative: SettingText | None = Field(None, description="default negative prompt")
    max_steps: Steps | None = Field(
        None, description="most steps a user may ask for (base and high-res pass)"
    )
    max_megapixels: Megapixels | None = Field(
        None, description="largest image a user may ask for (the high-res output included)"
    )
    max_count: Count | None = Field(
        None, description="most images in one job (4: variations in a grid; 1 turns variations off)"
    )
    upscale_scale: UpscaleScale | None = Field(
        None,
        description="the Upscale button's factor (the output is held to max_megapixels)",
        json_schema_extra={"allowed": UPSCALE_ALLOWED},
    )
    max_queued_per_user: QueuedPerUser | None = Field(None, description="jobs one user may have waiting")
    rate_limit: RateLimit | None = Field(None, description="jobs one user may submit per window")
    editor_access: EditorAccess | None = Field(
        None, description="who may open a result's region editor: its owner, or anyone"
    )


@dataclass(frozen=True, kw_only=True)
class SettingSpec:
    """A view of one ``ServerSettings`` field for the command's help and choices (derived, not declared)."""

    kind: Kind
    help: str
    scopes: tuple[Scope, ...] = ALL_SCOPES
    choices: tuple[str, ...] = ()


def _spec(name: str) -> SettingSpec:
    info = fields_of(ServerSettings)[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    found_kind = (
        "channels" if name == "allowed_channels" else extra.get("kind") or field_kind(ServerSettings, name)
    )
    if found_kind not in KINDS:
        raise TypeError(f"{name}: setting kind {found_kind!r} is none of {tuple(KINDS)}")
    declared_scopes = extra.get("scopes", list(ALL_SCOPES))
    if not isinstance(declared_scopes, list) or not all(scope in ALL_SCOPES for scope in declared_scopes):
        raise TypeError(f"{name}: json_schema_extra 'scopes' must be a list drawn from {ALL_SCOPES}")
    scopes = tuple(scope for scope in ALL_SCOPES if scope in declared_scopes)
    return SettingSpec(
        kind=KINDS[found_kind],
        help=info.description or "",
        scopes=scopes,
        choices=choices(ServerSettings, name),
    )


SETTINGS: dict[str, SettingSpec] = {name: _spec(name) for name in fields_of(ServerSettings)}

# The limits' defaults where no server or channel set them.
DEFAULT_LIMITS: dict[str, Any] = {"max_steps": 100, "max_megapixels": 4.2, "max_count": MAX_COUNT}

# Decoding switches (speed and validity, not the composition): every job takes them from the channel's settings,
# refinements of older results included.
DECODING_SETTINGS = ("prompt_lookup", "prompt_lookup_tokens", "grammar")

_CHANNEL_ID = re.compile(r"<#(\d+)>|(\d{5,20})")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def setting_allowed(key: str) -> str:
    """What a setting accepts, in words, from its declaration (for /omost settings show and the docs)."""
    return allowed_text(ServerSettings, key)


def parse_setting(key: str, text: str) -> Any:
    """A setting's value from what an admin typed; one OmostError naming what is allowed."""
    spec = SETTINGS.get(key)
    if spec is None:
        raise OmostError(f"unknown setting {key[:40]!r}", parameter="key", value=key, allowed=list(SETTINGS))
    text = text.strip()
    value: Any = text
    if spec.kind == "bool":
        value = True if text.lower() in _TRUE else False if text.lower() in _FALSE else text
    elif spec.kind == "int":
        value = int(text) if re.fullmatch(r"[-+]?\d{1,25}", text) else text
    elif spec.kind == "float":
        try:
            value = float(text) if len(text) < 40 else text
        except ValueError:
            value = text
    elif spec.kind == "choice":
        value = text.lower()
    elif spec.kind == "size":
        RenderParams().replace(**_size_fields(text))  # validates the preset / WxH and its range
        value = text.lower()
    elif spec.kind == "channels":
        if text.lower() == "all":
            return []
        ids = [int(a or b) for a, b in _CHANNEL_ID.findall(text)]
        value = ids or text
    return check_value(ServerSettings, key, value, say_kind=True)


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
    max_count: int = MAX_COUNT
    upscale_scale: float = DEFAULT_UPSCALE
    editor_access: EditorAccess = "owner"  # who may open a result's region editor
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
        **DEFAULT_LIMITS,
        "allowed_channels": [],
        "unfiltered": False,
        "max_queued_per_user": config.max_queued_per_user,
        "rate_limit": config.rate_limit,
        "upscale_scale": config.upscale_scale,
        "editor_access": "owner",
    }
    stored: dict[str, Any] = {}
    if guild_id is not None:
        stored.update(await storage.settings("guild", guild_id))
    stored.update(
        {
            k: v
            for k, v in (await storage.settings("channel", channel_id)).items()
            if k in SETTINGS and "channel" in SETTINGS[k].scopes
        }
    )
    # Stored values were checked when set; checking again keeps a row from an older version honest.
    values.update({k: v for k, v in ServerSettings.from_dict(stored).to_dict().items() if v is not None})
    llm_fields = {
        k: values[k] for k in ("temperature", "top_p", "max_new_tokens", *DECODING_SETTINGS) if k in values
    }
    render_fields: dict[str, Any] = {
        k: values[k] for k in ("steps", "cfg", "method", "negative") if k in values
    }
    if "size" in values:
        render_fields.update(_size_fields(values["size"]))
    return Policy(
        values=values,
        llm=values["llm"],
        llm_params=LLMParams(**llm_fields),
        render_params=RenderParams(**render_fields),
        max_steps=int(values["max_steps"]),
        max_megapixels=float(values["max_megapixels"]),
        allowed_channels=tuple(values["allowed_channels"]),
        unfiltered=bool(values["unfiltered"]),
        max_queued_per_user=int(values["max_queued_per_user"]),
        rate_limit=int(values["rate_limit"]),
        max_count=int(values["max_count"]),
        upscale_scale=float(values["upscale_scale"]),
        editor_access=values["editor_access"],
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


# User options that go to LLMParams / RenderParams unchanged (the rest of a command's options: llm, size).
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


def enforce_limits(policy: Policy, params: RenderParams, *, count: int = 1) -> RenderParams:
    """The channel's limits, applied to the FINAL render parameters of every job, whatever built them
    (a command's options, a reply, a layout file, a reroll, the edit form, Variations, Again, Upscale).

    ``max_count`` holds for the images of one job (``count``: 4 for variations); ``max_steps`` for the
    base pass and the high-res pass; ``max_megapixels`` for the base size and for the image the high-res
    pass delivers (an upscale's output). Every other number is held to its declared range by
    ``RenderParams`` itself. Returns ``params`` unchanged when they fit; otherwise one ``OmostError``
    naming the limit and the range allowed here.
    """
    check_count(count)
    if count > policy.max_count:
        raise OmostError(
            f"{count} images in one job (variations) are not allowed here; this channel's max_count is "
            f"{policy.max_count} (allowed: 1{f' to {policy.max_count}' if policy.max_count > 1 else ''} "
            f"image{'s' if policy.max_count > 1 else ''} a job)",
            parameter="count",
            value=count,
            allowed=f"1..{policy.max_count}",
        )
    hires = params.output_size != (params.width, params.height)
    passes = [("steps", params.steps)] + ([("hr_steps", params.hr_steps)] if hires else [])
    for name, steps in passes:
        if steps > policy.max_steps:
            raise OmostError(
                f"{name} must be at most {policy.max_steps} here, not {steps} "
                f"(this channel's max_steps; allowed: 1 to {policy.max_steps})",
                parameter=name,
                value=steps,
                allowed=f"1..{policy.max_steps}",
            )
    sizes = [("size", (params.width, params.height), "")]
    if hires:
        sizes.append(("hr_scale", params.output_size, f"the high-res output (hr_scale {params.hr_scale:g}) "))
    for name, (width, height), what in sizes:
        megapixels = width * height / 1e6
        if megapixels > policy.max_megapixels + 1e-9:
            raise OmostError(
                f"{what or 'size '}{width}x{height} is {megapixels:.2f} megapixels; at most "
                f"{policy.max_megapixels:g} are allowed here (this channel's max_megapixels)",
                parameter=name,
                value=f"{width}x{height}",
                allowed=f"up to {policy.max_megapixels:g} MP",
            )
    return params


def build_params(
    policy: Policy, options: dict[str, Any], *, seed: int
) -> tuple[str | None, LLMParams, RenderParams]:
    """The (llm, LLMParams, RenderParams) of a request: the policy's defaults, the user's options over them,
    validated and held to the channel's limits (``count`` among the options: the images of the job).
    ``seed`` is used where the user gave none."""
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
    render_params = enforce_limits(
        policy, policy.render_params.replace(**render_changes), count=options.get("count", 1)
    )
    return llm, llm_params, render_params
