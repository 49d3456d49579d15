"""End to end through the real engine on tiny models: the chat service (a scripted LLM backend replaying
the README reply) and the regional SDXL renderer on a tiny random SDXL, behind /omost compose."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from simenv import DRAGON, simulate

from bot.bot import OmostBot
from bot.config import BotConfig
from bot.engine_factory import CombinedEngine
from omost_engine.clip_tokens import ClipTokenCounter
from omost_engine.engine import RenderResult
from omost_engine.layout import Layout
from omost_engine.llm.scripted import ScriptedBackend
from omost_engine.llm.service import ChatService
from omost_engine.render.renderer import Renderer
from omost_engine.reply import parse_reply
from omost_engine.testing.tiny_sdxl import save_tiny_sdxl


@pytest.fixture(scope="module")
def tiny_sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return save_tiny_sdxl(Path(tmp_path_factory.mktemp("tiny-sdxl"))).folder


@pytest.mark.slow
async def test_compose_and_reroll_with_the_real_engine(tmp_path: Path, tiny_sdxl_folder: Path) -> None:
    chat = ChatService(backend=ScriptedBackend([DRAGON], name="scripted-omost"))
    engine = CombinedEngine(
        chat_service=chat, renderer=Renderer(device="cpu", default_model=str(tiny_sdxl_folder))
    )
    bot = OmostBot(config=BotConfig(db=tmp_path / "bot.sqlite3"), engine=engine)
    async with simulate(bot, settle_timeout=120) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("studio")
        alice = guild.add_member(env.create_user("alice"))
        result = await alice.slash(
            channel, "omost compose", prompt="a dragon battle", size="256x256", steps=2, seed=3
        )
        message = result.response
        assert message is not None and "Done" in message.content, message
        files = {a.filename: a for a in message.attachments}
        image = Image.open(io.BytesIO(await files["image.png"].read()))
        assert image.size == (256, 256)
        layout = json.loads(await files["layout.json"].read())
        assert Layout.from_json(layout).to_comfyui() == parse_reply(DRAGON).to_comfyui()
        fields = {f.name: f.value for f in message.embeds[0].fields}
        assert fields["LLM"] == "scripted-omost" and fields["Seed"] == "3" and fields["Size"] == "256x256"
        reroll = await alice.click(message.message, label="Reroll")
        assert reroll.response is not None and "Done" in reroll.response.content
        rerolled = Image.open(io.BytesIO(await reroll.response.attachments[0].read()))
        assert rerolled.size == (256, 256) and rerolled.tobytes() != image.tobytes()  # a new seed
        await bot.storage.db.close()


class CountingRenderer(Renderer):
    """The real renderer, counting its calls and noting whether each was given a base image."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[tuple[int, bool]] = []

    def render(self, *args: Any, **kwargs: Any) -> RenderResult:
        self.calls.append((kwargs.get("count", 1), kwargs.get("base") is not None))
        return super().render(*args, **kwargs)


@pytest.mark.slow
async def test_variations_pick_and_upscale_with_the_real_engine(
    tmp_path: Path, tiny_sdxl_folder: Path
) -> None:
    """Issue 12: a grid of four seeds from the regional renderer on a tiny SDXL, a pick that renders
    nothing, and an upscale whose base is the kept image (only the high-res pass runs), larger."""
    chat = ChatService(backend=ScriptedBackend([DRAGON], name="scripted-omost"))
    renderer = CountingRenderer(device="cpu", default_model=str(tiny_sdxl_folder))
    engine = CombinedEngine(chat_service=chat, renderer=renderer)
    bot = OmostBot(config=BotConfig(db=tmp_path / "bot.sqlite3"), engine=engine)
    async with simulate(bot, settle_timeout=180) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("studio")
        alice = guild.add_member(env.create_user("alice"))
        result = await alice.slash(
            channel, "omost compose", prompt="a dragon battle", size="256x256", steps=2, seed=3, count=4
        )
        grid = result.response
        assert grid is not None and "Done" in grid.content, grid
        files = {a.filename: a for a in grid.attachments}
        cells = Image.open(io.BytesIO(await files["grid.png"].read())).convert("RGB")
        assert cells.size == (512, 512) and renderer.calls == [(4, False)]
        fields = {f.name: f.value for f in grid.embeds[0].fields}
        assert fields["Seeds"] == "1: 3 · 2: 4 · 3: 5 · 4: 6"

        picked = await alice.click(grid, label="3")
        assert picked.response is not None and "Done" in picked.response.content
        assert renderer.calls == [(4, False)]  # no render for the pick
        image = Image.open(io.BytesIO(await picked.response.attachments[0].read())).convert("RGB")
        assert image.tobytes() == cells.crop((0, 256, 256, 512)).tobytes()
        layout = json.loads(await picked.response.attachments[1].read())
        assert layout[0]["omost_bot"]["render"]["seed"] == 5

        upscaled = await alice.click(picked.response, label="Upscale")
        assert upscaled.response is not None and "Done" in upscaled.response.content, upscaled.response
        assert renderer.calls[-1] == (1, True)  # the kept image was the base
        larger = Image.open(io.BytesIO(await upscaled.response.attachments[0].read()))
        assert larger.size == (384, 384)
        await bot.storage.db.close()


@pytest.mark.slow
async def test_region_editor_with_the_real_engine(tmp_path: Path, tiny_sdxl_folder: Path) -> None:
    """Issue 12: edit a composed result's regions (the tiny SDXL's own CLIP tokenizer counts the sub-prompts),
    render the edited layout with the same seed, and reply: the LLM continues from the edited program."""
    backend = ScriptedBackend([DRAGON], name="scripted-omost")
    engine = CombinedEngine(
        chat_service=ChatService(backend=backend),
        renderer=Renderer(device="cpu", default_model=str(tiny_sdxl_folder)),
    )
    bot = OmostBot(
        config=BotConfig(db=tmp_path / "bot.sqlite3"),
        engine=engine,
        clip_tokens=ClipTokenCounter(str(tiny_sdxl_folder)),  # the model's tokenizer/ subfolder, no weights
    )
    async with simulate(bot, settle_timeout=120) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("studio")
        alice = guild.add_member(env.create_user("alice"))
        result = await alice.slash(
            channel, "omost compose", prompt="a dragon battle", size="256x256", steps=2, seed=3
        )
        first = Image.open(io.BytesIO(await result.response.attachments[0].read()))
        opened = await alice.click(result.response.message, label="Edit regions")
        editor = opened.response
        assert opened.ephemeral
        await alice.select(editor, ["on the bottom"], custom_id="omost:ed:1:location")
        shown = await alice.click(editor, custom_id="omost:ed:1:text")
        fields = {
            c["custom_id"]: c.get("value", "") for row in shown.modal["components"] for c in row["components"]
        }
        await alice.submit_modal(shown, {**fields, "tags": " ".join(["dragon"] * 80)})
        assert "CLIP tokens long" in editor.message.components[0].content  # refused, nothing changed
        shown = await alice.click(editor, custom_id="omost:ed:1:text")
        await alice.submit_modal(shown, {**fields, "description": "A calm lake."})
        rendered = await alice.click(editor, custom_id="omost:ed:1:render")
        message = rendered.response
        assert message is not None and "Done" in message.content, message
        fields_shown = {f.name: f.value for f in message.embeds[0].fields}
        assert fields_shown["Seed"] == "3"
        files = {a.filename: a for a in message.attachments}
        image = Image.open(io.BytesIO(await files["image.png"].read()))
        assert image.size == (256, 256) and image.tobytes() != first.tobytes()  # same seed, edited layout
        layout = Layout.from_json(json.loads(await files["layout.json"].read()))
        assert "A calm lake." in layout.meta["program"] and "on the bottom" in layout.meta["program"]
        await alice.send(channel, "make it winter", reply_to=message.message)
        history = backend.calls[-1]
        assert history[-1]["content"] == "make it winter"
        assert "A calm lake." in history[-2]["content"] and "on the bottom" in history[-2]["content"]
        await bot.storage.db.close()
