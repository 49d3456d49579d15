"""``OmostBot`` only composes: it opens the database, wires the job service's parts (store, presenter,
messenger), loads the cogs (the behaviour), syncs commands when they changed, and answers command errors."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import BotConfig
from bot.db import Database
from bot.job_store import JobStore
from bot.jobs import InProcessJobBackend, JobBackend, StageTimeouts
from bot.messenger import Messenger
from bot.presenter import StatusPresenter
from bot.service import JobService
from bot.storage import Storage
from bot.views import send_error
from omost_engine.clip_tokens import ClipTokenCounter
from omost_engine.engine import Engine
from omost_engine.errors import OmostError

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.omost",)
TREE_HASH_KEY = "command_tree_hash"


def bot_intents() -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = True  # privileged: replies to results are read as refinements
    return intents


class OmostTree(app_commands.CommandTree["OmostBot"]):
    async def on_error(
        self,
        interaction: discord.Interaction[OmostBot],
        error: app_commands.AppCommandError,
    ) -> None:
        """One clear ephemeral message for every failure; never a traceback in Discord."""
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, OmostError):
            message = str(cause)
        elif isinstance(cause, app_commands.CheckFailure):
            message = str(cause) or "you may not use this command here"
        elif isinstance(cause, discord.Forbidden):
            message = "Discord refused: I am missing a permission in this channel (Send Messages, Attach Files, Embed Links)"
        else:
            log.exception(
                "command %s failed",
                interaction.command.qualified_name if interaction.command else "?",
                exc_info=cause,
            )
            message = "something went wrong on my side; the error was logged. Please try again"
        await send_error(interaction, message)


class OmostBot(commands.Bot):
    """The bot. ``engine`` is any ``Engine``; ``backend`` replaces the in-process job queue; ``clip_tokens``
    counts CLIP tokens for the region editor's sub-prompt limit (None: that limit is not checked)."""

    def __init__(
        self,
        *,
        config: BotConfig,
        engine: Engine | None = None,
        backend: JobBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        clip_tokens: ClipTokenCounter | None = None,
        **options: Any,
    ) -> None:
        if engine is None and backend is None:
            raise ValueError("OmostBot needs an engine (for the in-process queue) or a job backend")
        options.setdefault("intents", bot_intents())
        # Nothing the bot sends may ping anyone unless a call says so (formatting.notify_only): user text is
        # echoed in answers and errors, and "@everyone" in a layout file must stay plain text.
        options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(
            command_prefix=commands.when_mentioned, tree_cls=OmostTree, help_command=None, **options
        )
        self.config = config
        self.engine = engine
        self.clip_tokens = clip_tokens
        if backend is None:
            assert engine is not None  # checked above: without a backend the bot has an engine
            backend = InProcessJobBackend(
                engine,
                max_queue=config.max_queue,
                clock=clock,
                timeouts=StageTimeouts(llm=config.llm_timeout_s, render=config.render_timeout_s),
            )
        self.backend: JobBackend = backend
        self.clock = clock
        self.wall_clock = wall_clock
        self.db: Database | None = None
        self.synced_commands = False  # whether this start synced the command tree (tests, logs)

    @property
    def storage(self) -> Storage:
        return self.jobs.storage

    async def setup_hook(self) -> None:
        self.db = await Database.open(self.config.db)
        # The job service's parts each get only what they use: the bot lends the messenger its Discord client.
        presenter = StatusPresenter(clock=self.clock)
        self.jobs = JobService(
            store=JobStore(
                Storage(self.db, clock=self.wall_clock),
                self.backend,
                sdxl=self.config.sdxl,
                keep_images_s=self.config.image_store_hours * 3600.0,
                keep_images_bytes=self.config.image_store_mb * 1024 * 1024,
            ),
            presenter=presenter,
            messenger=Messenger(
                self,
                progress=presenter.progress_kwargs,
                interval_s=self.config.status_interval_s,
                edits_per_s=self.config.status_edits_per_s,
                clock=self.clock,
            ),
            max_attempts=self.config.max_attempts,
            clock=self.clock,
        )
        self.backend.bind(self.jobs)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()
        failed, requeued = await self.jobs.recover()
        if failed or requeued:
            log.info("recovered jobs: %d failed, %d queued again", failed, requeued)

    def command_tree_hash(self) -> str:
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        text = json.dumps({"guild": self.config.sync_guild, "commands": payload}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Sync the slash commands when the tree changed since the last sync (or ``force``); Discord rate
        limits syncs, so a plain restart does not sync."""
        digest = self.command_tree_hash()
        if not force and await self.storage.meta(TREE_HASH_KEY) == digest:
            return False
        if self.config.sync_guild:
            guild = discord.Object(self.config.sync_guild)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        await self.storage.set_meta(TREE_HASH_KEY, digest)
        self.synced_commands = True
        log.info("synced the command tree (%s)", digest[:12])
        return True

    async def is_owner(self, user: discord.abc.User) -> bool:
        if self.config.owner_ids:
            return user.id in self.config.owner_ids
        return await super().is_owner(user)

    async def close(self) -> None:
        if hasattr(self, "jobs"):
            self.jobs.shutting_down = True  # the running job is stopped, not cancelled: it resumes on restart
        await self.backend.close()
        if hasattr(self, "jobs"):
            await self.jobs.drain()
        if self.db is not None:
            await self.db.close()
            self.db = None
        await super().close()
