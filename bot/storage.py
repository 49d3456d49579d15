"""Conversations, turns, layouts, jobs, settings and meta in SQLite: all a result needs to be redone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

import aiosqlite

from bot.db import Database
from omost_engine.engine import ChatMessage
from omost_engine.params import LLMParams, RenderParams

JobKind = Literal["compose", "render"]
JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
FINISHED_STATES: tuple[JobState, ...] = ("done", "failed", "cancelled", "interrupted")
Record = TypeVar("Record", "Turn", "JobRecord", "EditorRecord")


@dataclass(frozen=True, kw_only=True)
class Turn:
    id: int
    conversation_id: int
    parent_id: int | None
    user_id: int
    prompt: str
    reply: str | None
    layout_id: int | None


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    id: int
    kind: JobKind
    state: JobState
    user_id: int
    guild_id: int | None
    channel_id: int
    turn_id: int
    llm: str | None
    llm_params: LLMParams
    render_params: RenderParams
    layout_id: int | None
    status_message_id: int | None
    result_message_id: int | None
    llm_model: str | None
    render_model: str | None
    error: str | None
    created_at: float
    requester: str  # the requester's display name when the job was made ("" for jobs from before V2)
    attempt: int  # 1 for the first run; a job resumed after a restart runs again as 2, 3 ...
    delivery_started_at: float | None  # set before the result is sent to Discord (see recovery)
    count: int  # images rendered: 1, or up to 4 variations shown as a grid (V3)
    base_job_id: int | None  # an upscale: the job whose stored image is the base (V3)


@dataclass(frozen=True, kw_only=True)
class StoredImage:
    """One image of a recent result, kept in ``result_images`` for picks and upscales."""

    job_id: int
    index: int  # 0-based place in the job's grid
    seed: int
    png: bytes


@dataclass(frozen=True, kw_only=True)
class EditorRecord:
    """A region editor opened on a result (bot/region_editor.py); ``canvas`` is ``CanvasSpec.to_json()``."""

    id: int
    job_id: int
    user_id: int
    guild_id: int | None
    channel_id: int
    canvas: dict[str, Any]
    selected: int
    new_seed: bool


def _record(cls: type[Record], row: aiosqlite.Row, **decoded: Any) -> Record:
    """A record from a row whose columns carry its fields' names; ``decoded``: the fields stored encoded."""
    return cls(**{f.name: decoded[f.name] if f.name in decoded else row[f.name] for f in fields(cls)})


def _turn(row: aiosqlite.Row) -> Turn:
    return _record(Turn, row)


def _job(row: aiosqlite.Row) -> JobRecord:
    return _record(
        JobRecord,
        row,
        llm_params=LLMParams.from_dict(json.loads(row["llm_params"])),
        render_params=RenderParams.from_dict(json.loads(row["render_params"])),
    )


class Storage:
    """Typed queries over the bot's database. ``clock`` gives wall-clock seconds (injectable for tests)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    # -- conversations and turns ---------------------------------------------------------------

    async def new_conversation(self, *, guild_id: int | None, channel_id: int, user_id: int) -> int:
        """A fresh conversation that becomes the user's current one in this channel."""
        async with self.db.transaction() as tx:
            conversation_id = await tx.execute(
                "INSERT INTO conversations (guild_id, channel_id, user_id, created_at) VALUES (?, ?, ?, ?)",
                (guild_id, channel_id, user_id, self.clock()),
            )
            await tx.execute(
                "INSERT OR REPLACE INTO current_conversations (channel_id, user_id, conversation_id)"
                " VALUES (?, ?, ?)",
                (channel_id, user_id, conversation_id),
            )
        assert conversation_id is not None
        return conversation_id

    async def current_conversation(self, *, guild_id: int | None, channel_id: int, user_id: int) -> int:
        row = await self.db.fetchone(
            "SELECT conversation_id FROM current_conversations WHERE channel_id = ? AND user_id = ?",
            (channel_id, user_id),
        )
        if row is not None:
            return int(row["conversation_id"])
        return await self.new_conversation(guild_id=guild_id, channel_id=channel_id, user_id=user_id)

    async def head_turn(self, conversation_id: int) -> Turn | None:
        """The newest turn of a conversation: the point ``/omost compose`` continues from."""
        row = await self.db.fetchone(
            "SELECT * FROM turns WHERE conversation_id = ? ORDER BY id DESC LIMIT 1", (conversation_id,)
        )
        return _turn(row) if row else None

    async def add_turn(
        self,
        *,
        conversation_id: int,
        parent_id: int | None,
        user_id: int,
        prompt: str,
        reply: str | None = None,
        layout_id: int | None = None,
    ) -> int:
        turn_id = await self.db.execute(
            "INSERT INTO turns (conversation_id, parent_id, user_id, prompt, reply, layout_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, parent_id, user_id, prompt, reply, layout_id, self.clock()),
        )
        assert turn_id is not None
        return turn_id

    async def turn(self, turn_id: int) -> Turn | None:
        row = await self.db.fetchone("SELECT * FROM turns WHERE id = ?", (turn_id,))
        return _turn(row) if row else None

    async def set_turn_reply(self, turn_id: int, *, reply: str, layout_id: int) -> None:
        await self.db.execute(
            "UPDATE turns SET reply = ?, layout_id = ? WHERE id = ?", (reply, layout_id, turn_id)
        )

    async def chain(self, turn_id: int | None) -> list[Turn]:
        """The turns from the conversation's root down to ``turn_id`` (one branch of the tree)."""
        if turn_id is None:
            return []
        rows = await self.db.fetchall(
            "WITH RECURSIVE up(id) AS (SELECT ? UNION ALL SELECT t.parent_id FROM turns t JOIN up ON t.id = up.id"
            " WHERE t.parent_id IS NOT NULL) SELECT turns.* FROM turns JOIN up USING (id) ORDER BY turns.id",
            (turn_id,),
        )
        return [_turn(row) for row in rows]

    async def history(self, turn_id: int | None) -> list[ChatMessage]:
        """The LLM history ending with ``turn_id``; turns the LLM never answered are left out."""
        messages: list[ChatMessage] = []
        for turn in await self.chain(turn_id):
            if turn.reply is not None:
                messages += [ChatMessage("user", turn.prompt), ChatMessage("assistant", turn.reply)]
        return messages

    # -- layouts --------------------------------------------------------------------------------

    async def add_layout(self, data: str) -> int:
        layout_id = await self.db.execute(
            "INSERT INTO layouts (data, created_at) VALUES (?, ?)", (data, self.clock())
        )
        assert layout_id is not None
        return layout_id

    async def layout(self, layout_id: int) -> str | None:
        row = await self.db.fetchone("SELECT data FROM layouts WHERE id = ?", (layout_id,))
        return row["data"] if row else None

    # -- jobs -------------------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        kind: JobKind,
        user_id: int,
        guild_id: int | None,
        channel_id: int,
        turn_id: int,
        llm: str | None,
        llm_params: LLMParams,
        render_params: RenderParams,
        layout_id: int | None = None,
        requester: str = "",
        count: int = 1,
        base_job_id: int | None = None,
    ) -> int:
        job_id = await self.db.execute(
            "INSERT INTO jobs (kind, user_id, guild_id, channel_id, turn_id, llm, llm_params, render_params,"
            " layout_id, requester, count, base_job_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                user_id,
                guild_id,
                channel_id,
                turn_id,
                llm,
                json.dumps(llm_params.to_dict()),
                json.dumps(render_params.to_dict()),
                layout_id,
                requester,
                count,
                base_job_id,
                self.clock(),
            ),
        )
        assert job_id is not None
        return job_id

    async def job(self, job_id: int) -> JobRecord | None:
        row = await self.db.fetchone("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    async def job_by_message(self, message_id: int) -> JobRecord | None:
        """The finished job whose result is ``message_id`` (for replies and buttons)."""
        row = await self.db.fetchone("SELECT * FROM jobs WHERE result_message_id = ?", (message_id,))
        return _job(row) if row else None

    async def jobs_in_state(self, *states: JobState) -> list[JobRecord]:
        marks = ", ".join("?" * len(states))
        rows = await self.db.fetchall(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states)
        return [_job(row) for row in rows]

    async def update_job(self, job_id: int, **changes: Any) -> None:
        """Set columns of a job; ``state`` changes also stamp started_at/finished_at."""
        allowed = {
            "state",
            "status_message_id",
            "result_message_id",
            "layout_id",
            "llm_model",
            "render_model",
            "error",
            "render_params",
            "attempt",
            "delivery_started_at",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"not updatable job columns: {sorted(unknown)}")
        if isinstance(changes.get("render_params"), RenderParams):
            changes["render_params"] = json.dumps(changes["render_params"].to_dict())
        state = changes.get("state")
        if state == "running":
            changes["started_at"] = self.clock()
        elif state in FINISHED_STATES:
            changes["finished_at"] = self.clock()
        assignments = ", ".join(f"{name} = ?" for name in changes)
        await self.db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), job_id))

    async def count_recent_jobs(self, user_id: int, *, since: float) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM jobs WHERE user_id = ? AND created_at >= ?", (user_id, since)
        )
        return int(row["n"]) if row else 0

    async def user_results(
        self, *, user_id: int, channel_id: int, limit: int = 10
    ) -> list[tuple[JobRecord, Turn]]:
        """The user's newest finished results in a channel, newest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM jobs WHERE user_id = ? AND channel_id = ? AND state = 'done'"
            " AND result_message_id IS NOT NULL ORDER BY id DESC LIMIT ?",
            (user_id, channel_id, limit),
        )
        out = []
        for row in rows:
            job = _job(row)
            turn = await self.turn(job.turn_id)
            if turn is not None:
                out.append((job, turn))
        return out

    # -- result images -------------------------------------------------------------------------------

    async def store_images(
        self, job_id: int, images: list[tuple[int, bytes]], *, keep_s: float, keep_bytes: int
    ) -> None:
        """Keep a result's images ((seed, PNG) in grid order), then prune: images older than ``keep_s``
        seconds go, then the oldest until all of them together take at most ``keep_bytes``."""
        now = self.clock()
        async with self.db.transaction() as tx:
            for index, (seed, png) in enumerate(images):
                await tx.execute(
                    "INSERT OR REPLACE INTO result_images (job_id, idx, seed, png, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (job_id, index, seed, png, now),
                )
            await tx.execute("DELETE FROM result_images WHERE created_at < ?", (now - keep_s,))
            # The newest first; every image from where the running total passes the bound on goes.
            await tx.execute(
                "DELETE FROM result_images WHERE rowid IN (SELECT rowid FROM (SELECT rowid, SUM(LENGTH(png))"
                " OVER (ORDER BY created_at DESC, job_id DESC, idx DESC) AS total FROM result_images)"
                " WHERE total > ?)",
                (keep_bytes,),
            )

    async def result_image(self, job_id: int, index: int) -> StoredImage | None:
        """Image ``index`` of a job's result, while it is kept."""
        row = await self.db.fetchone(
            "SELECT job_id, idx, seed, png FROM result_images WHERE job_id = ? AND idx = ?", (job_id, index)
        )
        if row is None:
            return None
        return StoredImage(job_id=row["job_id"], index=row["idx"], seed=row["seed"], png=bytes(row["png"]))

    async def drop_images(self, job_id: int) -> None:
        await self.db.execute("DELETE FROM result_images WHERE job_id = ?", (job_id,))

    # -- region editors -----------------------------------------------------------------------------

    async def add_editor(
        self,
        *,
        job_id: int,
        user_id: int,
        guild_id: int | None,
        channel_id: int,
        canvas: dict[str, Any],
        selected: int = 0,
    ) -> int:
        now = self.clock()
        editor_id = await self.db.execute(
            "INSERT INTO editors (job_id, user_id, guild_id, channel_id, canvas, selected, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, user_id, guild_id, channel_id, json.dumps(canvas), selected, now, now),
        )
        assert editor_id is not None
        return editor_id

    async def editor(self, editor_id: int) -> EditorRecord | None:
        row = await self.db.fetchone("SELECT * FROM editors WHERE id = ?", (editor_id,))
        if row is None:
            return None
        return _record(EditorRecord, row, canvas=json.loads(row["canvas"]), new_seed=bool(row["new_seed"]))

    async def update_editor(
        self,
        editor_id: int,
        *,
        canvas: dict[str, Any] | None = None,
        selected: int | None = None,
        new_seed: bool | None = None,
    ) -> None:
        changes: dict[str, Any] = {"updated_at": self.clock()}
        if canvas is not None:
            changes["canvas"] = json.dumps(canvas)
        if selected is not None:
            changes["selected"] = selected
        if new_seed is not None:
            changes["new_seed"] = int(new_seed)
        assignments = ", ".join(f"{name} = ?" for name in changes)
        await self.db.execute(
            f"UPDATE editors SET {assignments} WHERE id = ?", (*changes.values(), editor_id)
        )

    # -- settings and meta ---------------------------------------------------------------------------

    async def settings(self, scope: Literal["guild", "channel"], scope_id: int) -> dict[str, Any]:
        rows = await self.db.fetchall(
            "SELECT key, value FROM settings WHERE scope = ? AND scope_id = ?", (scope, scope_id)
        )
        return {row["key"]: json.loads(row["value"]) for row in rows}

    async def set_setting(
        self, scope: Literal["guild", "channel"], scope_id: int, key: str, value: Any
    ) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO settings (scope, scope_id, key, value) VALUES (?, ?, ?, ?)",
            (scope, scope_id, key, json.dumps(value)),
        )

    async def delete_setting(self, scope: Literal["guild", "channel"], scope_id: int, key: str) -> bool:
        existed = await self.db.fetchone(
            "SELECT 1 FROM settings WHERE scope = ? AND scope_id = ? AND key = ?", (scope, scope_id, key)
        )
        await self.db.execute(
            "DELETE FROM settings WHERE scope = ? AND scope_id = ? AND key = ?", (scope, scope_id, key)
        )
        return existed is not None

    async def meta(self, key: str) -> str | None:
        row = await self.db.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return row["value"] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
