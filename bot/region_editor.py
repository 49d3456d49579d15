"""The region editor's rules (issue 12): open an editor on a result, apply an edit to its stored state,
build the render of the edited layout. No Discord here; ``cogs/omost_editor.py`` draws the editor.

An editor is one row of the ``editors`` table: the result's job, who opened it, the canvas being edited
(``CanvasSpec.to_json()``), the selected region and the New seed toggle. Every control of the editor
message carries only the row's id, so an editor keeps working after a restart, and several can be open
at once. Edits are the pure functions of ``omost_engine.editing``: each one gives a new spec, or one
``OmostError`` and nothing stored.

Who may edit: the result's owner, or anyone where the ``editor_access`` setting is ``anyone``; an editor's
controls answer only the person who opened it (checked again on every action, with the setting as it is
then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from bot.job_store import STORED_LAYOUT_BYTES, JobRequest
from bot.settings import EditorAccess, Policy, enforce_limits
from bot.storage import EditorRecord, JobRecord, Storage
from omost_engine import editing
from omost_engine.clip_tokens import ClipTokenCounter
from omost_engine.editing import CanvasSpec, Edit
from omost_engine.errors import OmostError
from omost_engine.layout import Layout

# What the user "said" in the conversation before the edited program (the LLM reads it in the history of
# a later reply); also the new result's title.
EDIT_PROMPT = "Apply the edits I made by hand in the region editor to the canvas."

# A form field's longest value: Discord's own ceiling for a text input (the forms declare it too, so
# Discord refuses more; a longer value is refused here with one line all the same).
MAX_FIELD_CHARS = 4000

# The forms: field name -> label. "Text…" for every region and the global description, "Style…" for regions.
TEXT_FORM = {
    "description": "Description",
    "detailed_descriptions": "Detailed descriptions (one per line)",
    "tags": "Tags",
}
STYLE_FORM = {"atmosphere": "Atmosphere", "style": "Style", "quality_meta": "Quality meta"}
COLOR_FIELD = "color"


@dataclass(frozen=True)
class EditorState:
    """An editor as the cog draws it: its row, the canvas, the result's job, and a line to show (the
    correction an edit made, or why an edit was refused: then nothing changed)."""

    record: EditorRecord
    spec: CanvasSpec
    job: JobRecord
    note: str | None = None
    refused: bool = False

    @property
    def selected(self) -> int:
        return self.record.selected


class RegionEditor:
    """Editors over the storage. ``tokens`` counts CLIP tokens for the sub-prompt limit (None: not checked)."""

    def __init__(self, storage: Storage, *, tokens: ClipTokenCounter | None = None) -> None:
        self.storage = storage
        self.tokens = tokens

    # -- opening and loading ---------------------------------------------------------------------------

    async def _result(self, job_id: int) -> tuple[JobRecord, Layout]:
        """The job of a result that still shows, and its layout (an OmostError when either is gone)."""
        job = await self.storage.job(job_id)
        if job is None:
            raise OmostError(f"job #{job_id} does not exist", parameter="job", value=job_id)
        if job.state != "done" or job.result_message_id is None:
            raise OmostError(
                f"job #{job_id} has no result to edit (it was deleted, or it never finished)",
                parameter="job",
                value=job_id,
            )
        data = await self.storage.layout(job.layout_id) if job.layout_id is not None else None
        if data is None:
            raise OmostError(
                f"the layout of job #{job_id} can no longer be found; nothing to edit",
                parameter="job",
                value=job_id,
            )
        return job, Layout.loads(data, max_bytes=STORED_LAYOUT_BYTES)

    @staticmethod
    def _check_access(job: JobRecord, user_id: int, access: EditorAccess) -> None:
        if user_id != job.user_id and access != "anyone":
            raise OmostError(
                f"only the person who asked for job #{job.id} can edit its regions here "
                "(an admin can let anyone: /omost settings set editor_access anyone)",
                parameter="editor_access",
                value=access,
                allowed="the result's owner",
            )

    async def open(
        self, job_id: int, *, user_id: int, guild_id: int | None, channel_id: int, access: EditorAccess
    ) -> EditorState:
        """A new editor on the result of ``job_id`` for ``user_id``, its first region selected."""
        job, layout = await self._result(job_id)
        self._check_access(job, user_id, access)
        spec = CanvasSpec.from_layout(layout)
        editor_id = await self.storage.add_editor(
            job_id=job.id,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            canvas=spec.to_json(),
            selected=1 if spec.regions else 0,
        )
        record = await self.storage.editor(editor_id)
        assert record is not None
        note = "; ".join(spec.notes) or None  # what reading a layout without its program assumed
        return EditorState(record, spec, job, note)

    async def load(self, editor_id: int, *, user_id: int, access: EditorAccess) -> EditorState:
        """The editor ``editor_id`` for an action by ``user_id`` (an OmostError for anyone else, or when the
        editor, the result or its layout is gone)."""
        record = await self.storage.editor(editor_id)
        if record is None:
            raise OmostError(
                f"region editor #{editor_id} no longer exists; open a new one with Edit regions",
                parameter="editor",
                value=editor_id,
            )
        if user_id != record.user_id:
            raise OmostError(
                f"this region editor belongs to <@{record.user_id}>; open your own with the result's "
                "Edit regions button",
                parameter="editor",
                value=editor_id,
            )
        job, _ = await self._result(record.job_id)
        self._check_access(job, user_id, access)
        return EditorState(record, CanvasSpec.from_json(record.canvas), job)

    # -- changes -----------------------------------------------------------------------------------------

    async def _store(
        self, state: EditorState, spec: CanvasSpec, selected: int, note: str | None
    ) -> EditorState:
        await self.storage.update_editor(state.record.id, canvas=spec.to_json(), selected=selected)
        record = replace(state.record, canvas=spec.to_json(), selected=selected)
        return EditorState(record, spec, state.job, note)

    async def apply(self, state: EditorState, change: Callable[[CanvasSpec, int], Edit]) -> EditorState:
        """Apply ``change(spec, selected)``; a refusal comes back as the state unchanged with its line."""
        try:
            edit = change(state.spec, state.selected)
        except OmostError as exc:
            return replace(state, note=str(exc), refused=True)
        return await self._store(state, edit.spec, edit.region, edit.note)

    async def select(self, state: EditorState, number: int) -> EditorState:
        if not 0 <= number <= len(state.spec.regions):
            return replace(
                state,
                note=f"there is no region {number}; allowed: 0 to {len(state.spec.regions)}",
                refused=True,
            )
        await self.storage.update_editor(state.record.id, selected=number)
        return replace(state, record=replace(state.record, selected=number), note=None)

    async def set_box(self, state: EditorState, **names: str) -> EditorState:
        return await self.apply(state, lambda spec, n: editing.set_box(spec, n, **names))

    async def closer(self, state: EditorState) -> EditorState:
        return await self.apply(state, editing.closer)

    async def farther(self, state: EditorState) -> EditorState:
        return await self.apply(state, editing.farther)

    async def add_region(self, state: EditorState) -> EditorState:
        return await self.apply(state, lambda spec, _: editing.add_region(spec))

    async def delete_region(self, state: EditorState) -> EditorState:
        return await self.apply(state, editing.delete_region)

    async def set_color(self, state: EditorState, number: int, name: str) -> EditorState:
        return await self.apply(state, lambda spec, _: editing.set_color(spec, number, name.strip()))

    async def set_texts(self, state: EditorState, number: int, values: Mapping[str, str]) -> EditorState:
        """A submitted form: ``values`` by field name (detailed descriptions one per line). Only the fields that
        changed are checked and set: a form sends every field back, and a text the LLM wrote stays as it was
        (also one longer than a form field holds, which the form showed cut)."""
        try:
            fields = state.spec.global_ if number == 0 else state.spec.region(number)
            changed = {k: v for k, v in values.items() if v != prefilled(fields, k)}
            texts = form_texts(changed)
        except OmostError as exc:
            return replace(state, note=str(exc), refused=True)
        if not texts:
            return replace(state, note="nothing changed")
        counter = None
        if self.tokens is not None:
            counter = await asyncio.to_thread(self.tokens.counter)  # loads the tokenizer once, off the loop
        return await self.apply(
            state, lambda spec, _: editing.set_text(spec, number, count_tokens=counter, **texts)
        )

    async def toggle_new_seed(self, state: EditorState) -> EditorState:
        new_seed = not state.record.new_seed
        await self.storage.update_editor(state.record.id, new_seed=new_seed)
        return replace(state, record=replace(state.record, new_seed=new_seed), note=None)

    # -- rendering ---------------------------------------------------------------------------------------

    async def render_request(
        self,
        state: EditorState,
        policy: Policy,
        *,
        user_id: int,
        requester: str,
        guild_id: int | None,
        channel_id: int,
        new_seed: Callable[[], int],
    ) -> JobRequest:
        """The render of the edited layout: the result's settings, its seed unless New seed is on, held to
        the channel's limits; a branch after the result's turn whose reply is the regenerated program."""
        job, layout = await self._result(state.job.id)
        edited = state.spec.apply_to(layout)
        seed = new_seed() if state.record.new_seed else job.render_params.seed
        params = enforce_limits(policy, job.render_params.replace(seed=seed))
        return JobRequest(
            kind="render",
            user_id=user_id,
            requester=requester,
            guild_id=guild_id,
            channel_id=channel_id,
            prompt=EDIT_PROMPT,
            llm=job.llm,
            llm_params=job.llm_params,
            render_params=params,
            parent_turn_id=job.turn_id,
            layout_json=edited.dumps(),
            reply=state.spec.reply(),
        )


def prefilled(fields: object, name: str) -> str:
    """What a form field shows for ``name`` of a region (or the global description): its text, the detailed
    descriptions one per line, cut to what a field holds."""
    value = getattr(fields, name, "")
    text = "\n".join(value) if isinstance(value, tuple) else str(value)
    return text[:MAX_FIELD_CHARS]


def form_texts(values: Mapping[str, str]) -> dict[str, object]:
    """A form's fields as ``editing.set_text`` takes them; one OmostError for a field over the limit."""
    labels = {**TEXT_FORM, **STYLE_FORM}
    texts: dict[str, object] = {}
    for name, value in values.items():
        if name not in labels:
            raise OmostError(
                f"the form has no field {name[:40]!r}; allowed: {', '.join(labels)}",
                parameter=name,
                allowed=", ".join(labels),
            )
        if len(value) > MAX_FIELD_CHARS:
            raise OmostError(
                f"{labels[name]} is {len(value)} characters long; allowed: at most {MAX_FIELD_CHARS} "
                "(and at most one CLIP chunk, 75 tokens, per sub-prompt)",
                parameter=name,
                value=len(value),
                allowed=f"at most {MAX_FIELD_CHARS} characters",
            )
        texts[name] = editing.lines(value) if name == "detailed_descriptions" else value.strip()
    return texts
