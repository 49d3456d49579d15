"""The bot against a loopback fake Discord: discord.py's real HTTP and gateway code end to end."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import discord
import pytest
import yarl
from loopback import FakeDiscord
from PIL import Image
from simenv import DINOSAUR, DRAGON

from bot.bot import OmostBot
from bot.config import BotConfig
from bot.testing import ScriptedEngine
from omost_engine.layout import Layout
from omost_engine.reply import parse_reply


async def test_compose_over_the_wire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway))
    engine = ScriptedEngine(replies=[DRAGON, DINOSAUR])
    bot = OmostBot(config=BotConfig(db=tmp_path / "bot.sqlite3"), engine=engine, guild_ready_timeout=0.05)
    runner = asyncio.create_task(bot.start("loopback-token"))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        assert [c["name"] for c in fake.commands] == ["omost"]  # synced once, on the first start
        token = await fake.slash("compose", prompt="a dragon battle", seed=21, steps=3)

        def delivered() -> bool:
            message_id = fake.interactions.get(token)
            return message_id is not None and fake.messages[message_id]["content"].startswith("✅")

        await fake.wait_for(delivered)
        message_id = fake.interactions[token]
        files = {u.filename: u.data for u in fake.uploads[message_id]}
        assert set(files) == {"image.png", "layout.json"}
        assert Image.open(io.BytesIO(files["image.png"])).size == engine.image_size
        layout = json.loads(files["layout.json"])
        assert (
            Layout.from_json(layout).to_comfyui() == parse_reply(DRAGON).to_comfyui()
            and layout[0]["omost_bot"]["render"]["seed"] == 21
        )
        message = fake.messages[message_id]
        fields = {f["name"]: f["value"] for f in message["embeds"][0]["fields"]}
        assert fields["Seed"] == "21" and message["embeds"][0]["image"]["url"] == "attachment://image.png"
        custom_ids = [c["custom_id"] for row in message["components"] for c in row["components"]]
        assert custom_ids == [
            f"omost:{a}:1" for a in ("reroll", "variations", "upscale", "regions", "edit", "layout", "delete")
        ]
        edits = [p for m, p in fake.requests if m == "PATCH" and p.endswith(f"/messages/{message_id}")]
        assert len(edits) >= 2  # progress, then the result
        # Every message body on the wire forbids pinging anyone (the bot-wide AllowedMentions.none()).
        messages = [
            (m, p, b.get("data", b) if p.startswith("interactions/") else b) for m, p, b in fake.bodies
        ]
        messages = [(m, p, b) for m, p, b in messages if "content" in b or "embeds" in b]
        assert len(messages) >= 3
        for method, path, body in messages:
            assert body.get("allowed_mentions") == {"parse": []}, (method, path, body.get("allowed_mentions"))
    finally:
        await bot.close()
        await asyncio.wait_for(runner, 10)
        await fake.stop()
