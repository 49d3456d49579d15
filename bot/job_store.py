"""A job's records: a validated request stored (turn, layout, conversation) and queued on the job backend,
undone when the queue refuses it; the spec a backend runs; the LLM's answer kept. No Discord here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from PIL import Image

from bot.jobs import JobBackend, JobSpec, Ticket
from bot.storage import JobKind, Storage
from omost_engine.engine import ChatResult, RenderResult
from omost_engine.errors import OmostError
from omost_engine.layout import Layout
from omost_engine.params import LLMParams, RenderParams
from omost_engine.png import png_bytes, png_image

STORED_LAYOUT_BYTES = 64 * 1024 * 1024  # layouts in the database were checked on the way in (plus our record)


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """A validated request, ready to be stored and queued."""

    kind: JobKind
    user_id: int
    guild_id: int | None
    channel_id: int
    prompt: str  # the user's text; for a layout render a short description of the file
    llm: str | None
    llm_params: LLMParams
    render_params: RenderParams
    parent_turn_id: int | None = None  # continue (or branch) from this turn; None: the channel's conversation
    fresh_turn: bool = True  # False: reuse turn_id and layout_id (a reroll)
    turn_id: int | None = None
    layout_json: str | None = None  # a render job's layout (Layout.dumps())
    layout_id: int | None = None
    requester: str = ""  # display name for the result embed
    count: int = 1  # images: 1, or up to 4 variations (seeds render_params.seed, +1, ...) shown as a grid
    base_job_id: int | None = None  # an upscale: the job whose stored image the high-res pass starts from
    # The new turn's assistant reply when it is known up front: a render from the region editor records
    # the regenerated program, so that a reply to its result continues from the edited program.
    reply: str | None = None


@dataclass(frozen=True)
class StoredJob:
    job_id: int
    turn_id: int
    created: dict[str, int] = field(
        default_factory=dict
    )  # rows made for it, removed again if the queue refuses


class JobStore:
    """Jobs in ``Storage`` and on the ``JobBackend``."""

    def __init__(
        self,
        storage: Storage,
        backend: JobBackend,
        *,
        sdxl: str | None,
        keep_images_s: float = 24 * 3600.0,
        keep_images_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.storage = storage
        self.backend = backend
        self.sdxl = sdxl
        self.keep_images_s = keep_images_s  # results' images are kept this long (picks, upscales) ...
        self.keep_images_bytes = keep_images_bytes  # ... and take at most this much, the oldest pruned first

    async def create(self, request: JobRequest) -> StoredJob:
        """Store a request: its turn (and layout, and conversation when it starts one) and its job row."""
        turn_id, layout_id = request.turn_id, request.layout_id
        created: dict[str, int] = {}
        if request.fresh_turn:
            if request.layout_json is not None:
                layout_id = created["layouts"] = await self.storage.add_layout(request.layout_json)
            if request.parent_turn_id is not None:
                parent = await self.storage.turn(request.parent_turn_id)
                assert parent is not None
                conversation_id = parent.conversation_id
            elif request.kind == "render":  # a layout file starts its own conversation, not the channel's
                conversation_id = await self.storage.new_conversation(
                    guild_id=request.guild_id, channel_id=request.channel_id, user_id=request.user_id
                )
            else:
                conversation_id = await self.storage.current_conversation(
                    guild_id=request.guild_id, channel_id=request.channel_id, user_id=request.user_id
                )
                head = await self.storage.head_turn(conversation_id)
                request = replace(request, parent_turn_id=head.id if head else None)
            turn_id = await self.storage.add_turn(
                conversation_id=conversation_id,
                parent_id=request.parent_turn_id,
                user_id=request.user_id,
                prompt=request.prompt,
                reply=request.reply,
                layout_id=layout_id if request.kind == "render" else None,
            )
            created["turns"] = turn_id
            created["conversations"] = conversation_id
        assert turn_id is not None
        job_id = await self.storage.create_job(
            kind=request.kind,
            user_id=request.user_id,
            guild_id=request.guild_id,
            channel_id=request.channel_id,
            turn_id=turn_id,
            llm=request.llm,
            llm_params=request.llm_params,
            render_params=request.render_params,
            layout_id=layout_id,
            requester=request.requester,
            count=request.count,
            base_job_id=request.base_job_id,
        )
        return StoredJob(job_id, turn_id, created)

    async def submit(self, job_id: int, user_id: int, *, user_cap: int | None = None) -> int:
        """Queue a stored job; its position. ``QueueFullError`` when the queue refuses it."""
        return await self.backend.submit(Ticket(job_id=job_id, user_id=user_id), user_cap=user_cap)

    async def discard(self, stored: StoredJob) -> None:
        """Remove what ``create`` stored (the queue refused the job)."""
        created = stored.created
        async with self.storage.db.transaction() as tx:
            await tx.execute("DELETE FROM jobs WHERE id = ?", (stored.job_id,))
            if "turns" in created:
                await tx.execute("DELETE FROM turns WHERE id = ?", (created["turns"],))
            if "layouts" in created:
                await tx.execute("DELETE FROM layouts WHERE id = ?", (created["layouts"],))
            if "conversations" in created:  # only if this request's turn was its first
                conversation = created["conversations"]
                empty = "NOT EXISTS (SELECT 1 FROM turns WHERE conversation_id = ?)"
                await tx.execute(
                    f"DELETE FROM current_conversations WHERE conversation_id = ? AND {empty}",
                    (conversation, conversation),
                )
                await tx.execute(
                    f"DELETE FROM conversations WHERE id = ? AND {empty}", (conversation, conversation)
                )

    async def prepare(self, job_id: int) -> JobSpec | None:
        """The spec of a queued job, now marked running; None when it is not queued any more."""
        job = await self.storage.job(job_id)
        if job is None or job.state != "queued":
            return None
        turn = await self.storage.turn(job.turn_id)
        assert turn is not None
        await self.storage.update_job(job_id, state="running")
        if job.kind == "render":
            assert job.layout_id is not None
            data = await self.storage.layout(job.layout_id)
            assert data is not None
            return JobSpec(
                job_id=job_id,
                prompt=turn.prompt,
                history=(),
                llm=None,
                llm_params=job.llm_params,
                render_params=job.render_params,
                layout=Layout.loads(data, max_bytes=STORED_LAYOUT_BYTES),
                sdxl=self.sdxl,
                count=job.count,
                base=await self.base_image(job.base_job_id),
            )
        history = await self.storage.history(turn.parent_id)
        return JobSpec(
            job_id=job_id,
            prompt=turn.prompt,
            history=history,
            llm=job.llm,
            llm_params=job.llm_params,
            render_params=job.render_params,
            sdxl=self.sdxl,
            count=job.count,
        )

    async def base_image(self, base_job_id: int | None) -> Image.Image | None:
        """An upscale's base: the source result's image while it is kept; None renders it in full (the same
        layout and seed give the same base image, then the high-res pass)."""
        if base_job_id is None:
            return None
        stored = await self.storage.result_image(base_job_id, 0)
        return png_image(stored.png) if stored is not None else None

    async def keep_images(self, job_id: int, render: RenderResult) -> None:
        """Keep a result's images (each with its seed) for picks and upscales, pruning old ones."""
        if self.keep_images_s <= 0 or self.keep_images_bytes <= 0:
            return
        # PNG encoding of full-size images takes tens of milliseconds each: off the event loop.
        pngs = await asyncio.to_thread(lambda: [png_bytes(image) for image in render.images])
        await self.storage.store_images(
            job_id,
            list(zip(render.seeds, pngs, strict=True)),
            keep_s=self.keep_images_s,
            keep_bytes=self.keep_images_bytes,
        )

    async def store_chat(self, job_id: int, turn_id: int, result: ChatResult) -> None:
        """The LLM's answer: its layout, the turn's reply, the model that wrote it."""
        layout_id = await self.storage.add_layout(result.layout.dumps())
        await self.storage.set_turn_reply(turn_id, reply=result.reply, layout_id=layout_id)
        await self.storage.update_job(job_id, layout_id=layout_id, llm_model=result.model)


def check_layout_size(size: int, *, max_bytes: int) -> None:
    """OmostError for a layout file over the limit (callers check an attachment's size before downloading it)."""
    if size > max_bytes:
        raise OmostError(
            f"the layout file is {size} bytes; at most {max_bytes} bytes are allowed",
            parameter="layout",
            value=size,
            allowed=f"up to {max_bytes} bytes",
        )


def layout_from_upload(data: bytes, *, max_bytes: int) -> Layout:
    """A user's layout file: size-checked, then parsed (ComfyUI_omost lists too); OmostError if bad."""
    check_layout_size(len(data), max_bytes=max_bytes)
    return Layout.loads(data, max_bytes=max_bytes)


def params_from_layout(layout: Layout, base: RenderParams) -> RenderParams:
    """The render parameters a layout file carries (validated by the loader), over ``base``."""
    return base.replace(**layout.render_settings)


def describe_layout(layout: Layout) -> str:
    """A prompt-like title for a layout render: its global description."""
    prefixes = layout.conditions[0].prefixes
    text = prefixes[0] if prefixes else ""
    prompt = layout.meta.get("prompt")
    return (prompt if isinstance(prompt, str) and prompt else text or "layout file")[:2000]
