"""A scripted engine: the ``Engine`` interface without GPU-sized models.

It writes a canvas program shaped like the published models' replies (or replays given replies),
parses it with the real ``parse_reply``, and paints a small real image from the layout's colour
sketch. It reports progress like the real engine (regions revealed as the "LLM" writes) and honours
``CancelToken``. Used by tests, benchmarks, demos and the distributed worker (``omost-bot worker
--engine scripted``); it needs no fixtures. For tests it records its calls, can be told to fail a
stage or to wait at a gate (until it opens or the job is cancelled; bounded), and can drive a
``FakeClock`` (each progress event moves it on);
``bot.testing`` adds the bot tests' handshake with the event loop.

Prompt directives (scripted engine only, removed from the text before use) let one worker serve
quick, slow and failing jobs: ``{{delay=1.5}}`` (seconds for this job, split between the LLM turn
and the render) and ``{{fail=internal}}`` (raise a RuntimeError, as a crashing engine would).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from omost_engine.engine import ChatMessage, ChatResult, RenderResult
from omost_engine.errors import CancelledError, OmostError
from omost_engine.params import LLMParams, RenderParams
from omost_engine.preview import masks_image, sketch_image
from omost_engine.progress import CancelToken, LLMProgress, ProgressCallback, RenderProgress
from omost_engine.reply import parse_reply
from omost_engine.variations import UPSCALE_MIN as HR_MIN_SCALE
from omost_engine.variations import check_count, grid_image, variation_seeds

if TYPE_CHECKING:
    from omost_engine.layout import Layout

_DIRECTIVE = re.compile(r"\{\{\s*(delay|fail)\s*=\s*([^}\s]+)\s*\}\}")
MASKS_SIZE = (360, 360)  # the labelled region map, test-sized

# The local regions of the generated program: (location, area, distance, colour, what).
_REGIONS = (
    ("on the left", "a medium-sized vertical area", 3.0, "steelblue", "the left part of the scene"),
    ("in the center", "a small square area", 1.5, "orange", "the main subject"),
)


class FakeClock:
    """A monotonic clock that moves only when told; thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def _directives(prompt: str) -> tuple[str, float | None, str | None]:
    delay: float | None = None
    fail: str | None = None
    for name, value in _DIRECTIVE.findall(prompt):
        if name == "delay":
            delay = float(value)
        else:
            fail = value
    return _DIRECTIVE.sub("", prompt).strip(), delay, fail


def scripted_reply(prompt: str) -> str:
    """A reply in the format the Omost models write: prose, then one python block."""
    subject = prompt or "an empty scene"
    lines = [
        f"Here is a composition for {subject!r}.",
        "",
        "```python",
        "# Initialize the canvas",
        "canvas = Canvas()",
        "",
        "canvas.set_global_description(",
        f"    description={subject!r},",
        f"    detailed_descriptions=[{('A scene showing ' + subject + '.')!r}],",
        "    tags='scene, composition',",
        "    HTML_web_color_name='lightblue',",
        ")",
    ]
    for location, area, distance, color, what in _REGIONS:
        lines += [
            "",
            "canvas.add_local_description(",
            f"    location={location!r},",
            "    offset='no offset',",
            f"    area={area!r},",
            f"    distance_to_viewer={distance!r},",
            f"    description={(what + ' of ' + subject)!r},",
            f"    detailed_descriptions=[{('Detail of ' + what + '.')!r}],",
            f"    tags={what!r},",
            "    atmosphere='Calm.',",
            "    style='Illustration.',",
            "    quality_meta='High detail.',",
            f"    HTML_web_color_name={color!r},",
            ")",
        ]
    lines.append("```")
    return "\n".join(lines)


class ScriptedEngine:
    """Implements ``omost_engine.engine.Engine`` with scripted replies and painted images.

    ``chat_seconds`` and ``render_seconds`` are the time each stage takes (slept in small steps,
    so cancel is noticed quickly). ``replies`` replays fixed replies instead of writing one: in call
    order (``reply_per="call"``), or turn N of a conversation gets reply N (``"turn"``, so a
    refinement gets the edited program). A chat reports ``progress_chunks`` partial events, then the
    whole reply. Images are ``image_size`` pixels, or the requested size divided by ``image_scale``.
    """

    def __init__(
        self,
        *,
        chat_seconds: float = 0.0,
        render_seconds: float = 0.0,
        replies: Sequence[str] = (),
        reply_per: Literal["call", "turn"] = "call",
        llm_name: str = "scripted-llm",
        model_name: str = "scripted-sdxl",
        progress_chunks: int = 4,
        image_scale: int = 8,  # images are width/8 x height/8: real pictures, test-sized
        image_size: tuple[int, int] | None = None,  # a fixed (width, height) instead
        clock: FakeClock | None = None,
        seconds_per_event: float = 1.0,  # how far each progress event moves ``clock``
        gate: threading.Event | None = None,  # when given and not yet set, stages wait here (or for a cancel)
        gate_stages: Collection[str] = ("chat", "render"),  # the stages that wait at the gate
        gate_timeout: float = 30.0,  # a gate left closed fails the stage instead of hanging the caller
    ) -> None:
        self.chat_seconds = chat_seconds
        self.render_seconds = render_seconds
        self.replies = tuple(replies)
        self.reply_per = reply_per
        self.llm_name = llm_name
        self.model_name = model_name
        self.progress_chunks = max(0, progress_chunks)
        self.image_scale = max(1, image_scale)
        self.image_size = image_size
        self.clock = clock
        self.seconds_per_event = seconds_per_event
        self.gate = gate
        self.gate_stages = frozenset(gate_stages)
        self.gate_timeout = gate_timeout
        self.entered = threading.Event()  # set when a stage starts
        self.at_gate = threading.Event()  # set while a stage waits at the closed gate
        self.cancelled: list[str] = []  # the stages that stopped at their start because of a cancel
        self.failures: deque[tuple[str, Exception]] = deque()  # (stage, error) for coming calls
        self.calls: list[tuple[str, str, int]] = []  # (stage, prompt or first prefix, seed)
        self.histories: list[list[ChatMessage]] = []
        self.llm_params: list[LLMParams] = []  # what each chat call was given
        # Each render call's image count and its base's size (an upscale's image; None: rendered in full).
        self.renders: list[tuple[int, tuple[int, int] | None]] = []
        self._lock = threading.Lock()  # the engine may serve several worker threads
        self._chats = 0

    def fail_next(self, stage: Literal["chat", "render"], error: Exception) -> None:
        """The next call of ``stage`` raises ``error`` (as a crashing model would)."""
        self.failures.append((stage, error))

    def after_progress(self) -> None:
        """Called after each progress event is reported; a hook for tests that pace the engine."""

    def _begin(self, stage: str, cancel: CancelToken | None) -> None:
        self.entered.set()
        if self.failures and self.failures[0][0] == stage:
            raise self.failures.popleft()[1]
        if self.gate is not None and stage in self.gate_stages:
            deadline = time.monotonic() + self.gate_timeout
            try:
                while not self.gate.is_set():
                    self.at_gate.set()
                    if cancel is not None and cancel.wait(0.005):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"scripted engine: the {stage} gate stayed closed for {self.gate_timeout:g} s"
                        )
                    self.gate.wait(0.005)
            finally:
                self.at_gate.clear()
        if cancel is not None and cancel.cancelled:
            with self._lock:
                self.cancelled.append(stage)
            cancel.raise_if_cancelled()

    def _report(self, on_progress: ProgressCallback | None, progress: LLMProgress | RenderProgress) -> None:
        if self.clock is not None:
            self.clock.advance(self.seconds_per_event)
        if on_progress is not None:
            on_progress(progress)
            self.after_progress()

    def _reply(self, history: Sequence[ChatMessage], index: int, text: str) -> str:
        if not self.replies:
            return scripted_reply(text)
        if self.reply_per == "turn":
            return self.replies[min(len(history) // 2, len(self.replies) - 1)]
        return self.replies[index % len(self.replies)]

    def chat(
        self,
        history: Sequence[ChatMessage],
        prompt: str,
        params: LLMParams,
        *,
        llm: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ChatResult:
        started = time.perf_counter()
        with self._lock:
            index = self._chats
            self._chats += 1
            self.calls.append(("chat", prompt, params.seed))
            self.histories.append(list(history))
            self.llm_params.append(params)
        text, delay, fail = _directives(prompt)
        self._begin("chat", cancel)
        if fail == "internal":
            raise RuntimeError("scripted engine failure (requested by the prompt)")
        reply = self._reply(history, index, text)
        layout = parse_reply(reply)
        seconds = delay / 2 if delay is not None else self.chat_seconds
        events = self.progress_chunks + 1  # the partial ones, then the whole reply
        chunk = len(reply) // events + 1
        for n in range(1, events + 1):
            _sleep(seconds / events, cancel)
            shown = reply if n == events else reply[: n * chunk]
            regions = len(layout.conditions) if n == events else max(1, len(layout.conditions) * n // events)
            elapsed = max(time.perf_counter() - started, 1e-6)
            self._report(
                on_progress,
                LLMProgress(
                    tokens=len(shown) // 4,
                    tokens_per_second=len(shown) / 4 / elapsed,
                    text=shown,
                    conditions=tuple(layout.conditions[:regions]),
                ),
            )
        if delay is not None:  # the render of this layout takes the other half
            layout = layout.with_meta(scripted_render_seconds=delay / 2)
        tokens = len(reply) // 4
        return ChatResult(
            reply=reply,
            layout=layout,
            model=llm or self.llm_name,
            tokens=tokens,
            seconds=time.perf_counter() - started,
            forward_passes=tokens,
        )

    def render(
        self,
        layout: Layout,
        params: RenderParams,
        *,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        count: int = 1,
        base: Image.Image | None = None,
    ) -> RenderResult:
        """As the real renderer: ``count`` seeds as one batched job (steps reported once, for all images,
        then a grid), ``base`` an upscale (only the high-res steps run)."""
        started = time.perf_counter()
        count = check_count(count)
        seeds = variation_seeds(params.seed, count)
        hires = params.hr_scale > HR_MIN_SCALE
        if base is not None and (count != 1 or not hires):
            raise OmostError(
                "an upscale is of one image with hr_scale above 1.05 (variations.upscale_params)",
                parameter="base",
            )
        with self._lock:
            prefixes = layout.conditions[0].prefixes if layout.conditions else ()
            self.calls.extend(("render", prefixes[0] if prefixes else "", seed) for seed in seeds)
            self.renders.append((count, base.size if base is not None else None))
        self._begin("render", cancel)
        seconds = float(layout.meta.get("scripted_render_seconds", self.render_seconds))
        stages = ([] if base is not None else [("render", params.steps)]) + (
            [("hires", params.hr_steps)] if hires else []
        )
        total_steps = sum(steps for _, steps in stages)
        done = 0
        for stage, steps in stages:
            for step in range(1, steps + 1):
                _sleep(seconds / total_steps, cancel)
                done += 1
                self._report(
                    on_progress,
                    RenderProgress(
                        step=step,
                        total=steps,
                        stage=stage,
                        run_step=done,
                        run_total=total_steps,
                        images=count,
                    ),
                )
        scale = params.hr_scale if hires else 1.0
        if self.image_size is not None:
            width, height = self.image_size
        else:
            width = max(8, round(params.width * scale) // self.image_scale)
            height = max(8, round(params.height * scale) // self.image_scale)
        sketch = np.asarray(sketch_image(layout, (width, height)), dtype=np.int16)
        images = []
        for seed in seeds:
            # Seeded grain so that two seeds give two different pictures, as with a real sampler.
            grain = np.random.default_rng(seed).integers(-12, 13, size=(height, width, 3))
            images.append(Image.fromarray(np.clip(sketch + grain, 0, 255).astype(np.uint8)))
        return RenderResult(
            image=images[0] if count == 1 else grid_image(images),
            masks=masks_image(layout, MASKS_SIZE),
            model=model or self.model_name,
            seconds=time.perf_counter() - started,
            params=params,
            images=tuple(images),
            seeds=seeds,
            batched=count > 1,
        )


def _sleep(seconds: float, cancel: CancelToken | None) -> None:
    if cancel is None:
        if seconds > 0:
            time.sleep(seconds)
        return
    if seconds > 0 and cancel.wait(seconds):
        raise CancelledError("cancelled")
    cancel.raise_if_cancelled()
