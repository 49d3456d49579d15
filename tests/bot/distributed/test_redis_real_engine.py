"""The real engine behind a worker: the chat service (scripted LLM backend with the README reply) and the
regional SDXL renderer on a tiny SDXL, through Redis to the bot's events."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import pytest
from PIL import Image
from redis_harness import RecordingHandler, wait_for_workers

from bot.distributed.backend import RedisJobBackend
from bot.distributed.client import RedisConfig
from bot.distributed.worker import GpuWorker, WorkerConfig
from bot.engine_factory import CombinedEngine
from bot.jobs import ChatDone, Failed, Finished, Progress, Ticket
from omost_engine.llm.scripted import ScriptedBackend
from omost_engine.llm.service import ChatService
from omost_engine.params import RenderParams
from omost_engine.progress import RenderProgress
from omost_engine.render.renderer import Renderer
from omost_engine.reply import parse_reply
from omost_engine.testing.tiny_sdxl import save_tiny_sdxl

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"
DRAGON = json.loads((GOLDENS / "01_readme_dragon_battle.json").read_text())["bot_response"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> CombinedEngine:
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    tiny = save_tiny_sdxl(Path(tmp_path_factory.mktemp("tiny-sdxl")))
    chat = ChatService(backend=ScriptedBackend([DRAGON, "no program in this reply"], name="scripted-omost"))
    return CombinedEngine(chat_service=chat, renderer=Renderer(device="cpu", default_model=str(tiny.folder)))


async def test_real_engine_results_cross_redis(redis_url: str, engine: CombinedEngine) -> None:
    prefix = f"real-{uuid.uuid4().hex[:8]}"
    worker = GpuWorker(
        engine,
        WorkerConfig(redis_url=redis_url, prefix=prefix, worker_id="tiny-gpu"),
        models={"llm": "scripted-omost", "sdxl": "tiny"},
    )
    task = asyncio.create_task(worker.run())
    backend = RedisJobBackend(RedisConfig(url=redis_url, prefix=prefix, watchdog_s=0.2))
    handler = RecordingHandler(
        prompts={1: "generate an image of the fierce battle of warriors and the dragon", 2: "make it better"},
        render_params=RenderParams(width=256, height=256, steps=3, seed=1),
    )
    backend.bind(handler)
    try:
        await wait_for_workers(backend, {"tiny-gpu"})
        await backend.submit(Ticket(job_id=1, user_id=1))
        await backend.submit(Ticket(job_id=2, user_id=2))
        await backend.join(timeout=120)
    finally:
        await backend.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    finished = handler.ended(1)
    assert isinstance(finished, Finished), handler.of(1)
    output = finished.output
    assert output.layout.conditions == parse_reply(DRAGON).conditions
    assert output.chat is not None and output.chat.reply == DRAGON and output.chat.model == "scripted-omost"
    assert isinstance(output.render.image, Image.Image) and output.render.image.size == (256, 256)
    assert output.render.params.seed == 1 and output.render.params.steps == 3
    assert output.render.masks.size[0] > 0
    steps = [e.progress for e in handler.of(1, Progress) if isinstance(e.progress, RenderProgress)]  # type: ignore[attr-defined]
    assert (
        steps and steps[-1].step == steps[-1].total == 3 and steps[-1].preview is None
    )  # previews stay there
    assert handler.of(1, ChatDone)
    # The LLM's second reply has no program: the user gets the chat service's one clear sentence.
    failed = handler.ended(2)
    assert isinstance(failed, Failed) and failed.stage == "llm"
    assert "not a valid canvas program" in failed.message
