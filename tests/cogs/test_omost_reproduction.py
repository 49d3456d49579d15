"""Issue 11: one layout file reproduces a result anywhere. On the tiny models, through the Discord simulator:
a bot result's layout.json rendered by `omost-bot render FILE` (no other flag) gives the same pixels, and a
file written by the CLI attached to /omost render gives the CLI's pixels. Every file checked against the
JSON Schema and ComfyUI_omost's loader rules."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from simenv import DRAGON, simulate

from bot.bot import OmostBot
from bot.cli import main
from bot.config import BotConfig
from bot.engine_factory import CombinedEngine
from omost_engine.llm.scripted import ScriptedBackend
from omost_engine.llm.service import ChatService
from omost_engine.render.renderer import Renderer
from omost_engine.reply import parse_reply
from omost_engine.testing.comfyui_loader import check_project_file
from omost_engine.testing.tiny_sdxl import save_tiny_sdxl


@pytest.fixture(scope="module")
def tiny_sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    return save_tiny_sdxl(Path(tmp_path_factory.mktemp("tiny-sdxl"))).folder


def _bot(tmp_path: Path, tiny_sdxl_folder: Path) -> OmostBot:
    # The renderer picks its device like the CLI does, so both render on the same one.
    engine = CombinedEngine(
        chat_service=ChatService(backend=ScriptedBackend([DRAGON], name="scripted-omost")),
        renderer=Renderer(default_model=str(tiny_sdxl_folder)),
    )
    return OmostBot(config=BotConfig(db=tmp_path / "bot.sqlite3"), engine=engine)


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def _attachments(message) -> dict[str, bytes]:
    return {a.filename: await a.read() for a in message.attachments}


@pytest.mark.slow
async def test_a_bot_result_rendered_by_the_cli_gives_the_same_pixels(
    tmp_path: Path, tiny_sdxl_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bot = _bot(tmp_path, tiny_sdxl_folder)
    async with simulate(bot, settle_timeout=120) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("studio")
        alice = guild.add_member(env.create_user("alice"))
        result = await alice.slash(
            channel,
            "omost compose",
            prompt="a dragon battle",
            size="256x256",
            steps=3,
            seed=41,
            method="area",
            cfg=6.5,
            negative="blurry",
        )
        assert result.response is not None and "Done" in result.response.content, result.response
        files = await _attachments(result.response.message)
        await bot.storage.db.close()
    doc = check_project_file(files["layout.json"].decode())
    record = doc[0]["omost_bot"]
    assert record["render"]["seed"] == 41 and record["sdxl"] == str(tiny_sdxl_folder)
    assert record["llm"] == "scripted-omost" and record["program"] and record["prompt"] == "a dragon battle"
    saved = tmp_path / "from-discord.json"
    saved.write_bytes(files["layout.json"])  # "Save" on the attachment
    out = tmp_path / "cli"
    assert main(["render", str(saved), "--out", str(out)]) == 0, capsys.readouterr().err
    cli_image = (out / "image.png").read_bytes()
    assert np.array_equal(_pixels(cli_image), _pixels(files["image.png"]))
    check_project_file((out / "layout.json").read_text())


@pytest.mark.slow
async def test_a_cli_file_attached_to_omost_render_gives_the_clis_pixels(
    tmp_path: Path, tiny_sdxl_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "dragon.json"
    bare.write_text(json.dumps(parse_reply(DRAGON).to_comfyui()))
    out = tmp_path / "cli"
    assert (
        main(
            [
                "render",
                str(bare),
                "--out",
                str(out),
                "--model",
                str(tiny_sdxl_folder),
                "--size",
                "320x256",
                "--steps",
                "3",
                "--seed",
                "1234",
                "--method",
                "area",
                "--overlap",
                "overlay",
                "--global-strength",
                "0.3",
                "--positive",
                "photo",
                "--quiet",
            ]
        )
        == 0
    ), capsys.readouterr().err
    cli_file = (out / "layout.json").read_bytes()
    check_project_file(cli_file.decode())
    bot = _bot(tmp_path, tiny_sdxl_folder)
    async with simulate(bot, settle_timeout=120) as env:
        guild = env.create_guild()
        channel = guild.create_text_channel("studio")
        alice = guild.add_member(env.create_user("alice"))
        result = await alice.slash(channel, "omost render", layout=("layout.json", cli_file))
        shown = result.followups[0]  # acknowledged privately first; the status message becomes the result
        assert "Done" in shown.content, result
        files = await _attachments(shown.message)
        fields = {f.name: f.value for f in shown.embeds[0].fields}
        # An option overrides the file, and the new file records it.
        other = await alice.slash(channel, "omost render", layout=("layout.json", cli_file), seed=99)
        assert "Done" in other.followups[0].content, other
        other_files = await _attachments(other.followups[0].message)
        await bot.storage.db.close()
    assert fields["Seed"] == "1234" and fields["Size"] == "320x256"
    assert np.array_equal(_pixels(files["image.png"]), _pixels((out / "image.png").read_bytes()))
    record = check_project_file(files["layout.json"].decode())[0]["omost_bot"]
    assert (
        record["render"] == json.loads(cli_file)[0]["omost_bot"]["render"] and record.get("overrides") is None
    )
    changed = check_project_file(other_files["layout.json"].decode())[0]["omost_bot"]
    assert changed["render"]["seed"] == 99 and changed["overrides"] == ["seed: 1234 -> 99 (the seed option)"]
    assert not np.array_equal(_pixels(other_files["image.png"]), _pixels(files["image.png"]))
