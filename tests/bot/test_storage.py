"""Conversations as trees of turns: history per branch, current conversation per channel and user."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot.db import Database
from bot.storage import Storage
from omost_engine.engine import ChatMessage
from omost_engine.params import LLMParams, RenderParams


@pytest_asyncio.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    db = await Database.open(tmp_path / "bot.sqlite3")
    clock = iter(range(1000, 10_000))
    yield Storage(db, clock=lambda: float(next(clock)))
    await db.close()


async def test_history_follows_one_branch(storage: Storage) -> None:
    conversation = await storage.current_conversation(guild_id=1, channel_id=2, user_id=3)
    root = await storage.add_turn(conversation_id=conversation, parent_id=None, user_id=3, prompt="a dragon")
    layout = await storage.add_layout("{}")
    await storage.set_turn_reply(root, reply="```python\n...\n```", layout_id=layout)
    left = await storage.add_turn(conversation_id=conversation, parent_id=root, user_id=3, prompt="night")
    await storage.set_turn_reply(left, reply="left reply", layout_id=layout)
    right = await storage.add_turn(conversation_id=conversation, parent_id=root, user_id=4, prompt="day")
    unanswered = await storage.add_turn(
        conversation_id=conversation, parent_id=left, user_id=3, prompt="rain"
    )
    assert await storage.history(left) == [
        ChatMessage("user", "a dragon"),
        ChatMessage("assistant", "```python\n...\n```"),
        ChatMessage("user", "night"),
        ChatMessage("assistant", "left reply"),
    ]
    assert await storage.history(right) == (await storage.history(root))  # unanswered turns are left out
    assert [t.id for t in await storage.chain(unanswered)] == [root, left, unanswered]
    assert (await storage.head_turn(conversation)).id == unanswered
    assert await storage.history(None) == []


async def test_current_conversation_is_per_channel_and_user_and_new_replaces_it(storage: Storage) -> None:
    first = await storage.current_conversation(guild_id=1, channel_id=2, user_id=3)
    assert await storage.current_conversation(guild_id=1, channel_id=2, user_id=3) == first
    assert await storage.current_conversation(guild_id=1, channel_id=2, user_id=4) != first
    assert await storage.current_conversation(guild_id=1, channel_id=5, user_id=3) != first
    fresh = await storage.new_conversation(guild_id=1, channel_id=2, user_id=3)
    assert fresh != first and await storage.current_conversation(guild_id=1, channel_id=2, user_id=3) == fresh


async def test_jobs_keep_every_parameter(storage: Storage) -> None:
    conversation = await storage.new_conversation(guild_id=1, channel_id=2, user_id=3)
    turn = await storage.add_turn(conversation_id=conversation, parent_id=None, user_id=3, prompt="p")
    render = RenderParams(
        width=1024,
        height=1024,
        steps=9,
        cfg=3.5,
        seed=5,
        method="area",
        overlap="overlay",
        negative="",
        positive="film grain",
    )
    job_id = await storage.create_job(
        kind="compose",
        user_id=3,
        guild_id=1,
        channel_id=2,
        turn_id=turn,
        llm="some/llm",
        llm_params=LLMParams(temperature=0.1, seed=5),
        render_params=render,
    )
    job = await storage.job(job_id)
    assert job.state == "queued" and job.render_params == render and job.llm_params.temperature == 0.1
    await storage.update_job(job_id, state="running")
    await storage.update_job(
        job_id, state="done", result_message_id=555, render_params=render.replace(seed=6)
    )
    assert (await storage.job_by_message(555)).render_params.seed == 6
    row = await storage.db.fetchone("SELECT started_at, finished_at FROM jobs WHERE id = ?", (job_id,))
    assert row["started_at"] < row["finished_at"]
    assert [j.id for j in await storage.jobs_in_state("done")] == [job_id]
    assert (
        await storage.count_recent_jobs(3, since=0) == 1
        and await storage.count_recent_jobs(3, since=1e9) == 0
    )


async def test_result_images_are_kept_for_a_bounded_time_and_size(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "images.sqlite3")
    now = [1000.0]
    storage = Storage(db, clock=lambda: now[0])
    try:
        await storage.store_images(1, [(10, b"a" * 100), (11, b"b" * 100)], keep_s=3600, keep_bytes=1000)
        kept = await storage.result_image(1, 1)
        assert kept is not None and (kept.job_id, kept.index, kept.seed, kept.png) == (1, 1, 11, b"b" * 100)
        assert await storage.result_image(1, 2) is None
        # Past the time bound: storing the next result prunes the old one.
        now[0] += 3601
        await storage.store_images(2, [(20, b"c" * 100)], keep_s=3600, keep_bytes=1000)
        assert await storage.result_image(1, 0) is None and await storage.result_image(2, 0) is not None
        # Past the size bound: the oldest images go first, the newest result stays whole.
        now[0] += 1
        await storage.store_images(3, [(30, b"d" * 400), (31, b"e" * 400)], keep_s=3600, keep_bytes=850)
        assert await storage.result_image(2, 0) is None
        assert await storage.result_image(3, 0) is not None and await storage.result_image(3, 1) is not None
        now[0] += 1
        await storage.store_images(4, [(40, b"f" * 400)], keep_s=3600, keep_bytes=850)
        # 400 + 400 fit; the third 400 (job 3's first image, the oldest of the newest result) does not.
        found = [await storage.result_image(job, n) for job, n in ((3, 0), (3, 1), (4, 0))]
        assert [image is not None for image in found] == [False, True, True]
        await storage.drop_images(4)
        assert await storage.result_image(4, 0) is None
    finally:
        await db.close()
