"""The scripted engine: real layouts through parse_reply, real small images, progress, cancel, directives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from omost_engine.engine import ChatMessage
from omost_engine.errors import CancelledError, OmostError
from omost_engine.params import LLMParams, RenderParams
from omost_engine.progress import CancelToken, LLMProgress, RenderProgress
from omost_engine.testing.scripted_engine import ScriptedEngine, scripted_reply

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


def test_written_reply_parses_into_a_layout() -> None:
    engine = ScriptedEngine(progress_chunks=3)
    seen: list[LLMProgress] = []
    result = engine.chat(
        [ChatMessage("user", "before")], "a fox in the snow, it's cold", LLMParams(), on_progress=seen.append
    )  # type: ignore[arg-type]
    assert result.model == "scripted-llm" and result.tokens > 0
    assert result.layout.conditions[0].prefixes[0].rstrip(".") == "a fox in the snow, it's cold"
    assert len(result.layout.conditions) == 3 and not result.layout.warnings
    assert len(seen) == 4 and seen[-1].text == result.reply and len(seen[-1].conditions) == 3
    assert [p.tokens for p in seen] == sorted(p.tokens for p in seen)
    assert "```python" in scripted_reply("x")


def test_replays_given_replies_in_turn() -> None:
    golden = (GOLDENS / "04_single_local_center.py").read_text()
    engine = ScriptedEngine(replies=[f"```python\n{golden}```", "no program here"])
    assert (
        engine.chat([], "one", LLMParams()).layout.conditions[0].prefixes[0]
        == "A red apple on a wooden table."
    )
    with pytest.raises(OmostError):  # the second reply has no program: the real parser says so
        engine.chat([], "two", LLMParams())


def test_render_paints_the_sketch_with_seeded_grain() -> None:
    engine = ScriptedEngine(llm_name="l", model_name="m")
    layout = engine.chat([], "a lake", LLMParams()).layout
    steps: list[RenderProgress] = []
    first = engine.render(
        layout, RenderParams(width=512, height=256, steps=5, seed=1), on_progress=steps.append
    )  # type: ignore[arg-type]
    again = engine.render(layout, RenderParams(width=512, height=256, steps=5, seed=1))
    other = engine.render(layout, RenderParams(width=512, height=256, steps=5, seed=2), model="named")
    assert first.image.size == (64, 32) and first.masks.size == (360, 360) and first.model == "m"
    assert other.model == "named"
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))
    assert [p.step for p in steps] == [1, 2, 3, 4, 5] and {p.total for p in steps} == {5}
    hires: list[RenderProgress] = []
    big = engine.render(
        layout,
        RenderParams(width=512, height=256, steps=2, hr_scale=1.5, hr_steps=3),
        on_progress=hires.append,
    )  # type: ignore[arg-type]
    assert big.image.size == (96, 48) and [p.stage for p in hires] == ["render"] * 2 + ["hires"] * 3


def test_cancel_stops_a_slow_stage_quickly() -> None:
    engine = ScriptedEngine(chat_seconds=30)
    token = CancelToken()
    threading.Timer(0.05, token.cancel).start()
    started = time.perf_counter()
    with pytest.raises(CancelledError):
        engine.chat([], "slow", LLMParams(), cancel=token)
    assert time.perf_counter() - started < 10  # far sooner than the 30 s the stage would take


def test_prompt_directives() -> None:
    engine = ScriptedEngine()
    result = engine.chat([], "a storm {{delay=0.2}}", LLMParams())
    assert (
        result.layout.conditions[0].prefixes[0].rstrip(".") == "a storm"
    )  # the directive is not part of the text
    assert result.layout.meta["scripted_render_seconds"] == pytest.approx(0.1)
    with pytest.raises(RuntimeError, match="scripted engine failure"):
        engine.chat([], "boom {{fail=internal}}", LLMParams())


def test_variations_and_upscale_through_the_engine_interface() -> None:
    engine = ScriptedEngine()
    layout = engine.chat([], "a kite", LLMParams()).layout
    seen: list[RenderProgress] = []
    params = RenderParams(width=512, height=512, steps=3, seed=9)
    grid = engine.render(layout, params, count=4, on_progress=seen.append)  # type: ignore[arg-type]
    assert grid.seeds == (9, 10, 11, 12) and grid.count == 4 and grid.batched
    assert grid.image.size == (128, 128) and all(image.size == (64, 64) for image in grid.images)
    assert [(p.steps_done, p.steps_in_all, p.images) for p in seen] == [(1, 3, 4), (2, 3, 4), (3, 3, 4)]
    assert [c[2] for c in engine.calls if c[0] == "render"] == [9, 10, 11, 12]
    third = grid.pick(2)
    single = engine.render(layout, params.replace(seed=11))
    assert third.params == single.params and np.array_equal(np.asarray(third.image), np.asarray(single.image))
    from omost_engine.variations import upscale_params

    seen.clear()
    up = engine.render(
        layout, upscale_params(single.params.replace(hr_steps=2)), base=single.image, on_progress=seen.append
    )  # type: ignore[arg-type]
    assert up.image.size == (96, 96) and [p.stage for p in seen] == ["hires", "hires"]
    with pytest.raises(OmostError, match="count must be a whole number from 1 to 4"):
        engine.render(layout, params, count=5)
    with pytest.raises(OmostError, match="upscale is of one image"):
        engine.render(layout, params, base=single.image)
