"""What travels through Redis between the bot and its GPU workers: keys, job requests, events.

Everything is JSON (never pickle: whoever can write to Redis must not be able to run code on a
worker). Images travel as PNG bytes in a result hash, not in the event stream, so the stream stays
small and a result outlives a bot restart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from bot.config import Attempts
from bot.jobs import JobSpec, StageTimeouts
from omost_engine.conditions import Condition
from omost_engine.declared import Declared, show
from omost_engine.engine import ChatMessage
from omost_engine.errors import OmostError
from omost_engine.params import LLMParams, RenderParams
from omost_engine.png import png_bytes as encode_png
from omost_engine.png import png_image as png_image  # re-exported: the client decodes results with it
from omost_engine.progress import LLMProgress, RenderProgress
from omost_engine.variations import MAX_COUNT

if TYPE_CHECKING:
    from PIL.Image import Image

PROTOCOL_VERSION = 1
WORKER_GROUP = "workers"  # the consumer group every worker reads a queue's job stream with
DEFAULT_QUEUE = "default"

# started: a worker took the job (``attempt`` counts the runs); stage: the LLM or render step began;
# llm/render: progress; chat: the LLM turn's result; then one of result, failed, cancelled.
# requeued: the job's worker stopped and the job waits for another one.
EventType = Literal["started", "stage", "llm", "chat", "render", "result", "failed", "cancelled", "requeued"]
TERMINAL_EVENTS = frozenset({"result", "failed", "cancelled"})


@dataclass(frozen=True)
class Keys:
    """Redis key names under one prefix, so several bots can share a Redis server."""

    prefix: str = "omost"

    def queue(
        self, name: str = DEFAULT_QUEUE
    ) -> str:  # a stream of jobs, read by the workers' consumer group
        return f"{self.prefix}:stream:{name}"

    @property
    def events(self) -> str:  # one stream for all jobs, read by the bot through a consumer group
        return f"{self.prefix}:events"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    # Keyed by the run id (submit time + job id), which never repeats, unlike the bot's job ids
    # (a fresh database starts at 1 again).
    def cancelled(self, run_id: str) -> str:
        return f"{self.prefix}:cancelled:{run_id}"

    def result(self, run_id: str) -> str:
        return f"{self.prefix}:result:{run_id}"

    def base(self, run_id: str) -> str:  # an upscale's base image (PNG), beside the job message, not in it
        return f"{self.prefix}:base:{run_id}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:  # sorted set: worker id -> last heartbeat (unix seconds)
        return f"{self.prefix}:workers"

    @property
    def jobs(self) -> str:  # hash: job id -> JSON of what the bot submitted (for recovery)
        return f"{self.prefix}:jobs"


def interrupted_message(runs: int) -> str:
    """What a user reads when workers kept dying under their job."""
    return (
        f"the GPU worker running this job stopped {runs} time{'s' if runs != 1 else ''} "
        "(a crash or a lost machine); it was not run again"
    )


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=repr).encode()


def loads(data: bytes | str) -> Any:
    return json.loads(data)


def _pairs(value: Any) -> Any:
    """JSON has lists, not tuples: [role, text] pairs as tuples, for the declared type to check."""
    return (
        [tuple(item) if isinstance(item, list) else item for item in value]
        if isinstance(value, list)
        else value
    )


class JobWire(Declared):
    """The fields of a job message on the wire: types and ranges declared once, checked on arrival
    (the message crossed a network). Unknown fields are ignored: a newer bot may send more."""

    v: Literal[1] = Field(description="protocol version")
    job_id: int = Field(description="the bot's job id")
    user_id: Annotated[int, Field(ge=0, le=2**64)] = 0
    prompt: Annotated[str, Field(max_length=100_000)] | None = None
    history: Annotated[list[tuple[Literal["user", "assistant"], str]], BeforeValidator(_pairs)] = Field(
        [], json_schema_extra={"allowed": "a list of [role, text] pairs, role user or assistant"}
    )
    llm: Annotated[str, Field(max_length=4096)] | None = None
    sdxl: Annotated[str, Field(max_length=4096)] | None = None
    llm_params: dict[str, Any] | None = None  # LLMParams' own declaration checks the contents
    render_params: dict[str, Any] | None = None  # RenderParams' own declaration checks the contents
    layout: Any = None  # the layout loader checks it
    llm_timeout: Annotated[float, Field(ge=0.01, le=86_400)] = 900.0
    render_timeout: Annotated[float, Field(ge=0.01, le=86_400)] = 900.0
    max_attempts: Attempts = 3
    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] = Field(1, description="images (variations)")
    base: bool = Field(False, description="an upscale: its base image waits under the run's base key")


@dataclass(frozen=True, kw_only=True)
class JobMessage:
    """One job as it travels to a worker: the bot's ``JobSpec`` plus the limits of the run."""

    spec: JobSpec
    user_id: int = 0
    timeouts: StageTimeouts = field(default_factory=StageTimeouts)
    max_attempts: int = 3  # runs allowed when workers die mid-job
    # An upscale's base image travels beside the message (``Keys.base``); a message read back says it has one.
    has_base: bool = False

    @property
    def job_id(self) -> str:
        return str(self.spec.job_id)

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "v": PROTOCOL_VERSION,
            "job_id": spec.job_id,
            "user_id": self.user_id,
            "prompt": spec.prompt,
            "history": [[m.role, m.content] for m in spec.history],
            "llm": spec.llm,
            "llm_params": spec.llm_params.to_dict(),
            "render_params": spec.render_params.to_dict(),
            "layout": spec.layout.to_json() if spec.layout is not None else None,
            "sdxl": spec.sdxl,
            "llm_timeout": self.timeouts.llm,
            "render_timeout": self.timeouts.render,
            "max_attempts": self.max_attempts,
            "count": spec.count,
            "base": spec.base is not None or self.has_base,
        }

    @classmethod
    def from_json(cls, data: Any) -> JobMessage:
        """Validate a message (it crossed a network); OmostError names the bad field."""
        if not isinstance(data, dict) or data.get("v") != PROTOCOL_VERSION:
            version = data.get("v") if isinstance(data, dict) else None
            raise OmostError(
                f"job message version {show(version)} is not supported",
                parameter="v",
                value=version,
                allowed=str(PROTOCOL_VERSION),
            )
        wire = JobWire.from_dict({k: v for k, v in data.items() if v is not None or k == "layout"})
        layout = None
        if wire.layout is not None:
            from omost_engine.layout import Layout

            layout = Layout.from_json(wire.layout)
        spec = JobSpec(
            job_id=wire.job_id,
            prompt=wire.prompt or "",
            history=tuple(ChatMessage(role, content) for role, content in wire.history),
            llm=wire.llm,
            llm_params=LLMParams.from_dict(wire.llm_params or {}),
            render_params=RenderParams.from_dict(wire.render_params or {}),
            layout=layout,
            sdxl=wire.sdxl,
            count=wire.count,
        )
        return cls(
            spec=spec,
            user_id=wire.user_id,
            timeouts=StageTimeouts(llm=wire.llm_timeout, render=wire.render_timeout),
            max_attempts=wire.max_attempts,
            has_base=wire.base,
        )


@dataclass(frozen=True, kw_only=True)
class WireEvent:
    """One message from a worker (or the bot's watchdog) about a job, in the shared event stream."""

    type: EventType
    job_id: str
    attempt: int = 1
    worker: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    stream_id: str = ""  # set when read back from the stream

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def encode(self) -> dict[str, bytes]:
        return {
            "e": dumps(
                {
                    "type": self.type,
                    "job_id": self.job_id,
                    "attempt": self.attempt,
                    "worker": self.worker,
                    "data": self.data,
                    "ts": self.ts,
                }
            )
        }

    @classmethod
    def decode(cls, fields: dict[bytes, bytes], stream_id: bytes | str = "") -> WireEvent:
        body = loads(fields[b"e"])
        sid = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
        return cls(
            type=body["type"],
            job_id=body["job_id"],
            attempt=int(body["attempt"]),
            worker=body["worker"],
            data=body["data"],
            ts=float(body["ts"]),
            stream_id=sid,
        )

    def progress(self) -> LLMProgress | RenderProgress | None:
        """The engine's own progress object for ``llm`` and ``render`` events, else None."""
        if self.type == "llm":
            return LLMProgress(
                tokens=int(self.data["tokens"]),
                tokens_per_second=float(self.data["tokens_per_second"]),
                text=str(self.data["text"]),
                conditions=tuple(condition_from_json(c) for c in self.data.get("conditions", [])),
            )
        if self.type == "render":
            run_step, run_total = self.data.get("run_step"), self.data.get("run_total")
            return RenderProgress(
                step=int(self.data["step"]),
                total=int(self.data["total"]),
                stage=str(self.data.get("stage", "render")),
                run_step=None if run_step is None else int(run_step),
                run_total=None if run_total is None else int(run_total),
                images=int(self.data.get("images", 1)),
            )
        return None


def progress_data(progress: LLMProgress | RenderProgress) -> tuple[EventType, dict[str, Any]]:
    """The event type and payload for an engine progress report (previews stay on the worker)."""
    if isinstance(progress, LLMProgress):
        return "llm", {
            "tokens": progress.tokens,
            "tokens_per_second": progress.tokens_per_second,
            "text": progress.text,
            "conditions": [c.to_json() for c in progress.conditions],
        }
    return "render", {
        "step": progress.step,
        "total": progress.total,
        "stage": progress.stage,
        "run_step": progress.run_step,
        "run_total": progress.run_total,
        "images": progress.images,
    }


def condition_from_json(data: dict[str, Any]) -> Condition:
    top, bottom, left, right = (int(v) for v in data["rect"])
    red, green, blue = (int(v) for v in data["color"])
    return Condition(
        rect=(top, bottom, left, right),
        prefixes=tuple(data["prefixes"]),
        suffixes=tuple(data["suffixes"]),
        color=(red, green, blue),
    )


def png_bytes(image: Image) -> bytes:
    # Fast, light compression: the bytes cross a LAN once and the bot re-encodes for Discord anyway.
    return encode_png(image, compress_level=1)


def result_fields(images: list[Image]) -> dict[str, bytes]:
    """A result's images in its hash: ``image`` (the grid, or the one image) and ``image:<n>`` for each
    image of a grid (0-based, grid order)."""
    return {f"image:{n}": png_bytes(image) for n, image in enumerate(images)} if len(images) > 1 else {}


def job_entry(run_id: str, request: dict[str, Any]) -> dict[str, bytes]:
    """The fields of a job's entry in its queue's stream: the run id and the job message."""
    return {"run": run_id.encode(), "job": dumps(request)}


def read_job_entry(fields: dict[bytes, bytes]) -> tuple[str, Any]:
    """The run id and the (not yet validated) job message of a stream entry."""
    run = fields.get(b"run", b"")
    try:
        payload = loads(fields[b"job"])
    except (KeyError, ValueError):
        payload = None
    return run.decode(errors="replace"), payload
