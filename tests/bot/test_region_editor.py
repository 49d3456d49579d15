"""The region editor's rules without Discord (bot/region_editor.py) on a real SQLite file: opening, access,
refusals that store nothing, the render request (seed, limits, branch with the regenerated program)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from simenv import DRAGON

from bot.config import BotConfig
from bot.db import Database
from bot.job_store import JobStore
from bot.jobs import InProcessJobBackend
from bot.region_editor import EDIT_PROMPT, MAX_FIELD_CHARS, RegionEditor, form_texts, prefilled
from bot.settings import resolve_policy
from bot.storage import Storage
from bot.testing import ScriptedEngine
from omost_engine.clip_tokens import ClipTokenCounter
from omost_engine.editing import CanvasSpec, set_text
from omost_engine.errors import OmostError
from omost_engine.params import LLMParams, RenderParams
from omost_engine.reply import extract_code, parse_reply
from omost_engine.testing.tiny_sdxl import write_clip_vocab

ALICE, BOB = 11, 22


@pytest_asyncio.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    db = await Database.open(tmp_path / "bot.sqlite3")
    yield Storage(db)
    await db.close()


async def result_job(storage: Storage, *, steps: int = 20, seed: int = 5) -> int:
    """A finished compose job of ALICE's with the README dragon as its layout, as the job service leaves it."""
    conversation = await storage.new_conversation(guild_id=1, channel_id=2, user_id=ALICE)
    turn = await storage.add_turn(
        conversation_id=conversation, parent_id=None, user_id=ALICE, prompt="a dragon"
    )
    layout = await storage.add_layout(parse_reply(DRAGON).with_meta(program=extract_code(DRAGON)).dumps())
    await storage.set_turn_reply(turn, reply=DRAGON, layout_id=layout)
    job = await storage.create_job(
        kind="compose",
        user_id=ALICE,
        guild_id=1,
        channel_id=2,
        turn_id=turn,
        llm=None,
        llm_params=LLMParams(),
        render_params=RenderParams(steps=steps, seed=seed),
        layout_id=layout,
    )
    await storage.update_job(job, state="done", result_message_id=1000 + job)
    return job


async def editor_rows(storage: Storage) -> int:
    row = await storage.db.fetchone("SELECT COUNT(*) AS n FROM editors")
    assert row is not None
    return int(row["n"])


async def test_open_is_for_the_owner_unless_anyone_may(storage: Storage) -> None:
    job = await result_job(storage)
    editor = RegionEditor(storage)
    with pytest.raises(OmostError, match="only the person who asked"):
        await editor.open(job, user_id=BOB, guild_id=1, channel_id=2, access="owner")
    assert await editor_rows(storage) == 0
    mine = await editor.open(job, user_id=ALICE, guild_id=1, channel_id=2, access="owner")
    theirs = await editor.open(job, user_id=BOB, guild_id=1, channel_id=2, access="anyone")
    assert mine.record.id != theirs.record.id and mine.selected == 1
    assert (
        mine.spec == CanvasSpec.from_program(extract_code(DRAGON)) and mine.note is None
    )  # from its program
    with pytest.raises(OmostError, match="belongs to"):
        await editor.load(mine.record.id, user_id=BOB, access="anyone")
    with pytest.raises(OmostError, match="only the person who asked"):  # the setting was turned back
        await editor.load(theirs.record.id, user_id=BOB, access="owner")
    with pytest.raises(OmostError, match="no longer exists"):
        await editor.load(999, user_id=ALICE, access="owner")


async def test_gone_results_and_layouts_are_refused(storage: Storage) -> None:
    editor = RegionEditor(storage)
    with pytest.raises(OmostError, match="job #5 does not exist"):
        await editor.open(5, user_id=ALICE, guild_id=1, channel_id=2, access="owner")
    job = await result_job(storage)
    state = await editor.open(job, user_id=ALICE, guild_id=1, channel_id=2, access="owner")
    await storage.update_job(job, result_message_id=None)  # the result was deleted
    with pytest.raises(OmostError, match="no result to edit"):
        await editor.load(state.record.id, user_id=ALICE, access="owner")
    other = await result_job(storage)
    await storage.db.execute("UPDATE jobs SET layout_id = NULL WHERE id = ?", (other,))
    with pytest.raises(OmostError, match="can no longer be found"):
        await editor.open(other, user_id=ALICE, guild_id=1, channel_id=2, access="owner")


async def test_refused_edits_store_nothing(storage: Storage) -> None:
    editor = RegionEditor(storage)
    state = await editor.open(
        await result_job(storage), user_id=ALICE, guild_id=1, channel_id=2, access="owner"
    )
    before = await storage.editor(state.record.id)
    huge = await editor.set_texts(state, 1, {"tags": "x" * (MAX_FIELD_CHARS + 1000)})
    assert huge.refused and f"at most {MAX_FIELD_CHARS}" in (huge.note or "")
    blank = await editor.set_texts(state, 1, {"description": " "})
    assert blank.refused and "empty" in (blank.note or "")
    colour = await editor.set_color(state, 1, "zzqqxx")
    assert colour.refused
    assert await editor.select(state, 99) == replace(
        state, note="there is no region 99; allowed: 0 to 4", refused=True
    )
    assert await storage.editor(state.record.id) == before
    with pytest.raises(OmostError, match="no field"):
        form_texts({"colour": "red"})


async def test_the_clip_token_limit_with_the_tiny_tokenizer(storage: Storage, tmp_path: Path) -> None:
    write_clip_vocab(tmp_path)
    editor = RegionEditor(storage, tokens=ClipTokenCounter(str(tmp_path), subfolder=None))
    state = await editor.open(
        await result_job(storage), user_id=ALICE, guild_id=1, channel_id=2, access="owner"
    )
    long = await editor.set_texts(state, 2, {"atmosphere": "a " * 100})
    assert long.refused and "CLIP tokens long" in (long.note or "")
    missing = RegionEditor(storage, tokens=ClipTokenCounter(str(tmp_path / "nowhere"), subfolder=None))
    unchecked = await missing.set_texts(state, 2, {"atmosphere": "a " * 100})  # no tokenizer: not checked
    assert not unchecked.refused


async def test_the_render_request_branches_with_the_edited_program(storage: Storage, tmp_path: Path) -> None:
    job = await result_job(storage, steps=40, seed=5)
    editor = RegionEditor(storage)
    state = await editor.open(job, user_id=ALICE, guild_id=1, channel_id=2, access="owner")
    state = await editor.set_texts(state, 1, {"description": "A golden sun."})
    policy = await resolve_policy(storage, BotConfig(db=tmp_path / "x"), guild_id=1, channel_id=2)
    request = await editor.render_request(
        state, policy, user_id=ALICE, requester="alice", guild_id=1, channel_id=2, new_seed=lambda: 77
    )
    source = await storage.job(job)
    assert source is not None
    assert (
        request.kind == "render"
        and request.render_params.seed == 5
        and request.parent_turn_id == source.turn_id
    )
    assert request.reply == state.spec.reply() and "A golden sun." in (request.reply or "")
    store = JobStore(storage, InProcessJobBackend(ScriptedEngine(replies=[DRAGON])), sdxl=None)
    created = await store.create(request)
    assert (await storage.history(created.turn_id))[-2:][0].content == EDIT_PROMPT
    assert (await storage.history(created.turn_id))[-1].content == state.spec.reply()
    seeded = await editor.toggle_new_seed(state)
    again = await editor.render_request(
        seeded, policy, user_id=ALICE, requester="alice", guild_id=1, channel_id=2, new_seed=lambda: 77
    )
    assert again.render_params.seed == 77
    limited = replace(policy, max_steps=30)
    with pytest.raises(OmostError, match="steps must be at most 30"):
        await editor.render_request(
            state, limited, user_id=ALICE, requester="alice", guild_id=1, channel_id=2, new_seed=lambda: 77
        )


async def test_a_form_sends_every_field_and_only_the_changed_ones_are_set(storage: Storage) -> None:
    editor = RegionEditor(storage)
    state = await editor.open(
        await result_job(storage), user_id=ALICE, guild_id=1, channel_id=2, access="owner"
    )
    # Detailed descriptions longer in all than a form field holds: the form shows them cut.
    long = tuple(f"{i} " + "word " * 300 for i in range(3))
    state = await editor.apply(state, lambda spec, n: set_text(spec, n, detailed_descriptions=list(long)))
    assert not state.refused
    region = state.spec.region(1)
    shown = {name: prefilled(region, name) for name in ("description", "detailed_descriptions", "tags")}
    assert len(shown["detailed_descriptions"]) == MAX_FIELD_CHARS
    state = await editor.set_texts(state, 1, {**shown, "tags": "storm, sky"})
    assert not state.refused and state.spec.region(1).tags == "storm, sky"
    assert state.spec.region(1).detailed_descriptions == long  # the cut field was left alone
    same = await editor.set_texts(state, 1, {**shown, "tags": "storm, sky"})
    assert same.note == "nothing changed" and same.spec == state.spec
