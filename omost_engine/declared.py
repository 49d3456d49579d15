"""Typed declarations (pydantic v2) and the one way their validation errors are worded.

Every parameter and setting of the project is a field of a ``Declared`` model: its type, range
(``ge``/``le``, ``multiple_of``, ``max_length``), default and help text are written there once. From
the declaration come the validation, the message a user reads (``field_error``: the field, the value,
what is allowed), the Discord options' ranges and choices, the settings parser, the docs' tables and
the layout file's JSON Schema.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from omost_engine.errors import OmostError, quote

MAX_QUOTED_DIGITS = 40  # a larger integer is described by its length (printing it can itself fail)


def show(value: Any) -> str:
    """A value for an error message: shortened, and safe for integers too large to print."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * MAX_QUOTED_DIGITS:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"a {digits}-digit number"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return quote(value)


class Declared(BaseModel):
    """Strict (no silent conversion), frozen, no unknown fields; errors are ``OmostError``s."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise validation_error(type(self), exc, data) from None

    # -- the dict round trip used by storage, the wire and layout files --------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, unknown: Literal["ignore", "refuse"] = "ignore", where: str = ""
    ) -> Self:
        """A model from a mapping; unknown keys are dropped (stored rows from other versions) or refused."""
        if not isinstance(data, Mapping):
            raise OmostError(
                f"{where or cls.__name__} must be an object, not {show(data)}",
                parameter=where or cls.__name__,
                value=data,
                allowed="a JSON object",
            )
        names = cls.model_fields
        extra = [k for k in data if k not in names]
        if extra and unknown == "refuse":
            raise unknown_field_error(cls, str(extra[0]), where)
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except OmostError as exc:
            if where and exc.parameter and not exc.parameter.startswith(f"{where}."):
                raise OmostError(
                    f"{where}.{exc.message}",
                    parameter=f"{where}.{exc.parameter}",
                    value=exc.value,
                    allowed=exc.allowed,
                ) from None
            raise

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes``."""
        return type(self)(**{**dict(self), **changes})

    def validated(self) -> Self:
        return self  # construction validates; kept for callers written against the dataclasses

    @classmethod
    def check_fields(cls, data: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
        """Validate some of the fields (a partial set, e.g. a layout file's render settings)."""
        if not isinstance(data, Mapping):
            raise OmostError(
                f"{where or cls.__name__} must be an object, not {show(data)}",
                parameter=where or cls.__name__,
                value=data,
                allowed="a JSON object",
            )
        checked: dict[str, Any] = {}
        for key, value in data.items():
            if key not in cls.model_fields:
                raise unknown_field_error(cls, str(key), where)
            checked[key] = check_value(cls, key, value, label=f"{where}.{key}" if where else key)
        return checked


def unknown_field_error(cls: type[Any], key: str, where: str = "") -> OmostError:
    allowed = ", ".join(fields_of(cls))
    place = f" in {where}" if where else ""
    return OmostError(
        f"unknown field {show(key)}{place}; allowed: {allowed}",
        parameter=f"{where}.{key}" if where else key,
        value=key,
        allowed=allowed,
    )


def fields_of(cls: type[Any]) -> dict[str, FieldInfo]:
    """The declared fields of a pydantic model or pydantic dataclass."""
    found = getattr(cls, "__pydantic_fields__", None)
    return dict(found) if found is not None else dict(cls.model_fields)


@cache
def _adapter(cls: type, name: str) -> TypeAdapter[Any]:  # type, not type[Any]: the cache key must be Hashable
    info = fields_of(cls)[name]
    # Any: a type form built at run time (Annotated[...] from the field's parts) is not one to a type checker
    annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    return TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))


def check_value(cls: type, name: str, value: Any, *, label: str | None = None, say_kind: bool = False) -> Any:
    """One field's value validated against its declaration; ``OmostError`` worded like ``field_error``."""
    try:
        return _adapter(cls, name).validate_python(value)
    except ValidationError:
        raise field_error(cls, name, value, label=label, say_kind=say_kind) from None


def validation_error(cls: type[Any], exc: ValidationError, data: Mapping[str, Any]) -> OmostError:
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = first.get("loc") or ()
    name = str(loc[0]) if loc else ""
    if first.get("type") == "extra_forbidden":
        return unknown_field_error(cls, name)
    if name in fields_of(cls):
        return field_error(cls, name, data.get(name))
    return OmostError(f"{cls.__name__}: {first.get('msg', 'invalid')}", parameter=name or None)


# -- describing a declaration ---------------------------------------------------------------------------


def _plain(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def constraints(info: FieldInfo) -> dict[str, Any]:
    """ge/le/multiple_of/max_length/min_length of a field, wherever pydantic keeps them."""
    found: dict[str, Any] = {}
    metadata = list(info.metadata)
    annotation, _ = _plain(info.annotation)
    if get_origin(annotation) is Annotated:
        metadata += list(get_args(annotation)[1:])
    for item in list(metadata):
        if isinstance(item, FieldInfo):
            metadata += item.metadata
    for item in metadata:
        for key in ("ge", "le", "gt", "lt", "multiple_of", "max_length", "min_length"):
            value = getattr(item, key, None)
            if value is not None:
                found.setdefault(key, value)
    return found


def field_kind(cls: type[Any], name: str) -> str:
    """bool, int, float, text, choice, list, object or other."""
    annotation, _ = _plain(fields_of(cls)[name].annotation)
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return "choice"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if annotation is str:
        return "text"
    if get_origin(annotation) in (list, tuple):
        return "list"
    if annotation is dict or get_origin(annotation) is dict:
        return "object"
    return "other"


def choices(cls: type[Any], name: str) -> tuple[str, ...]:
    annotation, _ = _plain(fields_of(cls)[name].annotation)
    return tuple(str(a) for a in get_args(annotation)) if get_origin(annotation) is Literal else ()


def bounds(cls: type[Any], name: str) -> tuple[float | None, float | None]:
    found = constraints(fields_of(cls)[name])
    return found.get("ge", found.get("gt")), found.get("le", found.get("lt"))


def _g(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def allowed_text(cls: type[Any], name: str, *, say_kind: bool = True) -> str:
    """What a field accepts, in words: "a whole number from 1 to 100", "omost or area", ..."""
    info = fields_of(cls)[name]
    kind = field_kind(cls, name)
    found = constraints(info)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "allowed" in extra:
        return str(extra["allowed"])
    if kind == "choice":
        text = (
            " or ".join(choices(cls, name))
            if len(choices(cls, name)) <= 2
            else "one of " + ", ".join(choices(cls, name))
        )
    elif kind == "bool":
        text = "true or false"
    elif kind in ("int", "float"):
        low, high = bounds(cls, name)
        noun = "a whole number" if kind == "int" else "a number"
        if low is not None and high is not None:
            text = f"{noun + ' ' if say_kind else ''}from {_g(low)} to {_g(high)}"
        elif low is not None:
            text = f"{noun} of at least {_g(low)}"
        else:
            text = noun
        if found.get("multiple_of"):
            text += f", a multiple of {found['multiple_of']}"
    elif kind == "text":
        high = found.get("max_length")
        low = found.get("min_length")
        text = (
            f"text of {low} to {high} characters"
            if low
            else f"text of at most {high} characters"
            if high
            else "text"
        )
    elif kind == "list":
        text = "a list"
        if found.get("max_length"):
            text += f" of at most {found['max_length']} items"
    elif kind == "object":
        text = "an object"
    else:
        text = "a valid value"
    return text


def field_error(
    cls: type[Any], name: str, value: Any, *, label: str | None = None, say_kind: bool = False
) -> OmostError:
    """The one message for a bad value: "<field> must be <allowed>, not <value>"."""
    label = label or name
    kind = field_kind(cls, name)
    allowed = allowed_text(cls, name)
    wrong_type = (
        (kind == "int" and (isinstance(value, bool) or not isinstance(value, int)))
        or (kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)))
        or (kind == "float" and isinstance(value, float) and not math.isfinite(value))
    )
    found = constraints(fields_of(cls)[name])
    if kind in ("int", "float") and not wrong_type:
        low, high = bounds(cls, name)
        in_range = (low is None or value >= low) and (high is None or value <= high)
        if in_range and found.get("multiple_of"):
            message = f"{label} must be a multiple of {found['multiple_of']}, not {show(value)}"
            return OmostError(message, parameter=label, value=value, allowed=allowed)
        message = f"{label} must be {allowed_text(cls, name, say_kind=say_kind)}, not {show(value)}"
    else:
        message = f"{label} must be {allowed}, not {show(value)}"
    return OmostError(message, parameter=label, value=value, allowed=allowed)


def field_rows(cls: type[Any], names: Iterable[str] | None = None) -> list[tuple[str, str, str, str]]:
    """(name, allowed, default, help) per field, for documentation tables and help texts."""
    rows = []
    for name in names or fields_of(cls):
        info = fields_of(cls)[name]
        default = info.get_default(call_default_factory=True)
        rows.append(
            (
                name,
                allowed_text(cls, name),
                "—" if default in (None, "", (), []) else str(default),
                info.description or "",
            )
        )
    return rows


def flag_help(cls: type[Any], name: str, *, default_text: str = "default") -> str:
    """A command-line flag's help from the declaration: "diffusion steps: a whole number from 1 to 100 (25)"."""
    info = fields_of(cls)[name]
    default = info.get_default(call_default_factory=True)
    shown = "off" if default is None else repr(default) if isinstance(default, str) else str(default)
    kind = field_kind(cls, name)
    allowed = f": {allowed_text(cls, name)}" if kind in ("int", "float") else ""
    return f"{info.description or name}{allowed} ({default_text} {shown})".replace("%", "%%")


def flag_type(cls: type[Any], name: str) -> type:
    """The Python type a command-line flag parses into (the declaration then checks the value)."""
    return {"int": int, "float": float}.get(field_kind(cls, name), str)
