"""End to end through the real engine on tiny models: the chat service (a scripted LLM backend replaying
the README reply) and the regional SDXL renderer on a tiny random SDXL, behind /omost compose."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from simenv import DRAGON, simulate

from bot.bot import OmostBot
from bot.config import BotConfig
from bot.engine_factory import CombinedEngine
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
