"""The ``/omost`` command group, the job buttons and the reply listener: Discord checks what the
declarations say (ranges, choices, guild-only, admin and owner checks), ``OmostActions`` does the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot import formatting
from bot.access import is_admin
from bot.bot import OmostBot
from bot.distributed.health import status_lines
from bot.settings import (
    RENDER_OPTIONS,
    SETTINGS,
    is_unfiltered_model,
    known_llms,
    parse_setting,
    resolve_policy,
    setting_allowed,
)
from bot.views import JobButton
from cogs.omost_actions import OmostActions
from cogs.omost_editor import OmostEditor
from cogs.omost_variations import VariationActions
from omost_engine.declared import allowed_text, bounds, constraints, field_kind, fields_of
from omost_engine.errors import OmostError
from omost_engine.params import ASPECT_PRESETS, LLMParams, Method, Overlap, RenderParams
from omost_engine.variations import MAX_COUNT

Interaction = discord.Interaction[OmostBot]


def _range(model: type, name: str) -> Any:
    """The option type Discord enforces in the client, from the field's declaration (its one range)."""
    low, high = bounds(model, name)
    if low is None or high is None:
        raise TypeError(f"{model.__name__}.{name} declares no range for its option")
    if field_kind(model, name) == "int":
        return app_commands.Range[int, int(low), int(high)]
    return app_commands.Range[float, float(low), float(high)]


def _describe(model: type, name: str, text: str | None = None) -> str:
    """An option's description: the declaration's help and allowed values (Discord allows 100 characters)."""
    info = fields_of(model)[name]
    help_text = text or info.description or name
    kind = field_kind(model, name)
    allowed = f" ({allowed_text(model, name, say_kind=False)})" if kind in ("int", "float") else ""
    return (help_text + allowed)[:100]


# Option types and descriptions, all from the declarations in omost_engine.params (nothing restated here).
# To a type checker each is the plain type a Range stands for (what discord.py hands the command).
if TYPE_CHECKING:
    SeedOption = int
    StepsOption = int
    CfgOption = float
    GlobalStrengthOption = float
    RegionStrengthOption = float
    TemperatureOption = float
    TopPOption = float
    MaxNewTokensOption = int
else:
    SeedOption = _range(RenderParams, "seed")
    StepsOption = _range(RenderParams, "steps")
    CfgOption = _range(RenderParams, "cfg")
    GlobalStrengthOption = _range(RenderParams, "global_strength")
    RegionStrengthOption = _range(RenderParams, "region_strength")
    TemperatureOption = _range(LLMParams, "temperature")
    TopPOption = _range(LLMParams, "top_p")
    MaxNewTokensOption = _range(LLMParams, "max_new_tokens")
TextOption = app_commands.Range[str, 1, constraints(fields_of(RenderParams)["negative"])["max_length"]]

_RENDER_DESCRIPTIONS = {
    "seed": _describe(RenderParams, "seed", "random seed; random if left out"),
    "size": f"a preset ({', '.join(ASPECT_PRESETS)}) or WIDTHxHEIGHT"[:100],
    **{name: _describe(RenderParams, name) for name in RENDER_OPTIONS if name != "seed"},
}
_LLM_DESCRIPTIONS = {name: _describe(LLMParams, name) for name in ("temperature", "top_p", "max_new_tokens")}
COUNT_DESCRIPTION = "1 image, or 4 variations (four seeds of the layout) in a grid"
# The images of one job: Discord offers only these (the channel's max_count is checked on the final request).
COUNT_CHOICES = [
    app_commands.Choice(name="1 image", value=1),
    app_commands.Choice(name=f"{MAX_COUNT} variations (a grid)", value=MAX_COUNT),
]


CommandT = TypeVar("CommandT")


def admins_only(what: str) -> Callable[[CommandT], CommandT]:
    """A declared check: only members with Manage Server. (Discord's ``default_permissions`` applies to
    top-level commands only, and these are subcommands of ``/omost``; the check answers like an error.)"""

    def predicate(interaction: Interaction) -> bool:
        if not is_admin(interaction.permissions):
            raise app_commands.CheckFailure(f"only admins (Manage Server permission) can {what}")
        return True

    return app_commands.check(predicate)


def owners_only() -> Callable[[CommandT], CommandT]:
    """A declared check: only the bot's owners (``owner_ids``, else the application's owners)."""

    async def predicate(interaction: Interaction) -> bool:
        if not await interaction.client.is_owner(interaction.user):
            raise app_commands.CheckFailure("only the bot's owners can do that")
        return True

    return app_commands.check(predicate)


@app_commands.guild_only()  # Discord offers /omost in servers only; a reply in a DM is ignored (actions.admit)
class Omost(commands.GroupCog, group_name="omost", group_description="Compose images with Omost"):
    """The ``/omost`` commands, the job buttons and the reply listener; ``actions`` does the work."""

    def __init__(self, bot: OmostBot) -> None:
        self.bot = bot
        self.storage = bot.jobs.storage
        self.backend = bot.backend
        self.config = bot.config
        self.actions = OmostActions(storage=self.storage, jobs=bot.jobs, config=bot.config)
        self.actions.buttons.update(VariationActions(self.actions).buttons())
        super().__init__()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)  # buttons of results posted before a restart still answer
        # Job progress and results reach the cog as events (bot/events.py); its actions follow their jobs.
        self._unsubscribe = self.bot.jobs.events.subscribe(self.actions.on_job_update)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(JobButton)
        self._unsubscribe()
        await self.actions.drain()

    async def on_job_button(self, interaction: discord.Interaction[Any], action: str, job_id: int) -> None:
        """A click on a job's button (bot/views.JobButton hands it here): the actions' registry answers."""
        await self.actions.on_button(interaction, action, job_id)

    settings = app_commands.Group(name="settings", description="Defaults and limits for this server (admins)")

    # -- composing ---------------------------------------------------------------------------------------

    @app_commands.command(name="compose", description="Compose an image from a sentence")
    @app_commands.describe(
        prompt="what the image should show",
        llm="LLM id (default: the server's)",
        count=COUNT_DESCRIPTION,
        **_LLM_DESCRIPTIONS,
        **_RENDER_DESCRIPTIONS,
    )
    @app_commands.choices(count=COUNT_CHOICES)
    async def compose(
        self,
        interaction: Interaction,
        prompt: str,
        llm: str | None = None,
        seed: SeedOption | None = None,
        temperature: TemperatureOption | None = None,
        top_p: TopPOption | None = None,
        max_new_tokens: MaxNewTokensOption | None = None,
        size: str | None = None,
        steps: StepsOption | None = None,
        cfg: CfgOption | None = None,
        method: Method | None = None,
        global_strength: GlobalStrengthOption | None = None,
        region_strength: RegionStrengthOption | None = None,
        overlap: Overlap | None = None,
        negative: TextOption | None = None,
        positive: TextOption | None = None,
        count: int | None = None,
    ) -> None:
        options = {
            "count": count,
            "llm": llm,
            "seed": seed,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "size": size,
            "steps": steps,
            "cfg": cfg,
            "method": method,
            "global_strength": global_strength,
            "region_strength": region_strength,
            "overlap": overlap,
            "negative": negative,
            "positive": positive,
        }
        await self.actions.compose(interaction, prompt, options)

    @app_commands.command(
        name="render", description="Render a layout file (ours or ComfyUI_omost's) without the LLM"
    )
    @app_commands.describe(layout="a layout .json file", count=COUNT_DESCRIPTION, **_RENDER_DESCRIPTIONS)
    @app_commands.choices(count=COUNT_CHOICES)
    async def render(
        self,
        interaction: Interaction,
        layout: discord.Attachment,
        seed: SeedOption | None = None,
        size: str | None = None,
        steps: StepsOption | None = None,
        cfg: CfgOption | None = None,
        method: Method | None = None,
        global_strength: GlobalStrengthOption | None = None,
        region_strength: RegionStrengthOption | None = None,
        overlap: Overlap | None = None,
        negative: TextOption | None = None,
        positive: TextOption | None = None,
        count: int | None = None,
    ) -> None:
        options = {
            "count": count,
            "seed": seed,
            "size": size,
            "steps": steps,
            "cfg": cfg,
            "method": method,
            "global_strength": global_strength,
            "region_strength": region_strength,
            "overlap": overlap,
            "negative": negative,
            "positive": positive,
        }
        await self.actions.render_upload(interaction, layout, options)

    @compose.autocomplete("size")
    @render.autocomplete("size")
    async def _size_choices(self, interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=f"{name} ({w}x{h})", value=name)
            for name, (w, h) in ASPECT_PRESETS.items()
            if current.lower() in name
        ][:25]

    @compose.autocomplete("llm")
    async def _llm_choices(self, interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
        policy = await resolve_policy(
            self.storage,
            self.config,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
        )
        return [
            app_commands.Choice(name=f"{repo.split('/')[-1]} — {note}"[:100], value=repo)
            for repo, note in known_llms()
            if current.lower() in repo.lower() and (policy.unfiltered or not is_unfiltered_model(repo))
        ][:25]

    # -- conversation and queue ----------------------------------------------------------------------------

    @app_commands.command(name="new", description="Start a fresh conversation in this channel")
    async def new(self, interaction: Interaction) -> None:
        await self.storage.new_conversation(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
        )
        await interaction.response.send_message(
            "🆕 Started a fresh conversation: your next `/omost compose` here begins from scratch.",
            ephemeral=True,
        )

    @app_commands.command(name="history", description="Your recent results in this channel")
    async def history(self, interaction: Interaction) -> None:
        results = await self.storage.user_results(
            user_id=interaction.user.id, channel_id=interaction.channel_id or 0
        )
        if not results:
            await interaction.response.send_message(
                "You have no results in this channel yet.", ephemeral=True
            )
            return
        lines = [
            f"[Job #{job.id}](https://discord.com/channels/{job.guild_id or '@me'}/{job.channel_id}/"
            f"{job.result_message_id}) · seed {job.render_params.seed} · {formatting.shorten(turn.prompt, 80)}"
            for job, turn in results
        ]
        await interaction.response.send_message("\n".join(lines)[:1990], ephemeral=True)

    @app_commands.command(name="queue", description="What is waiting and running")
    async def queue(self, interaction: Interaction) -> None:
        snapshot = self.backend.snapshot()
        if not snapshot:
            await interaction.response.send_message("The queue is empty.", ephemeral=True)
            return
        lines = []
        for ticket, position in snapshot[:20]:
            where = "running" if position == 0 else f"#{position}"
            mine = " (yours)" if ticket.user_id == interaction.user.id else ""
            lines.append(f"{where} · job #{ticket.job_id} · <@{ticket.user_id}>{mine}")
        if len(snapshot) > 20:
            lines.append(f"… and {len(snapshot) - 20} more")
        await interaction.response.send_message(
            "\n".join(lines), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @app_commands.command(name="status", description="Workers, their models and the queue (admins)")
    @admins_only("see the workers' status")
    async def status(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # Redis may take a moment
        lines = await status_lines(self.backend)
        await interaction.followup.send("\n".join(lines)[:1990], ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel your job (admins: any job)")
    @app_commands.describe(job="the job number; your newest queued or running job if left out")
    async def cancel(self, interaction: Interaction, job: int | None = None) -> None:
        if job is None:
            own = [t.job_id for t, _ in self.backend.snapshot() if t.user_id == interaction.user.id]
            if not own:
                raise OmostError("you have no queued or running job", parameter="job")
            job = own[-1]
        record = await self.storage.job(job)
        if record is None:
            raise OmostError(f"job #{job} does not exist", parameter="job", value=job)
        await self.actions.cancel(interaction, record)

    @app_commands.command(name="help", description="How to use Omost")
    async def help(self, interaction: Interaction) -> None:
        await interaction.response.send_message(formatting.HELP_TEXT, ephemeral=True)

    @app_commands.command(name="sync", description="Sync the slash commands with Discord (bot owners)")
    @owners_only()
    async def sync(self, interaction: Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self.bot.sync_commands(force=True)
        await interaction.followup.send("🔄 Commands synced.", ephemeral=True)

    @app_commands.command(name="pause", description="Hold the queue: start no new jobs (bot owners)")
    @owners_only()
    async def pause(self, interaction: Interaction) -> None:
        self.backend.pause()
        await interaction.response.send_message(
            "⏸️ The queue is paused; waiting jobs stay queued.", ephemeral=True
        )

    @app_commands.command(name="resume", description="Start jobs again after /omost pause (bot owners)")
    @owners_only()
    async def resume(self, interaction: Interaction) -> None:
        self.backend.resume()
        await interaction.response.send_message("▶️ The queue runs again.", ephemeral=True)

    # -- settings (admins) -----------------------------------------------------------------------------------

    @settings.command(name="show", description="The settings in effect in this channel")
    @admins_only("view or change Omost settings")
    async def settings_show(self, interaction: Interaction) -> None:
        assert interaction.guild_id is not None
        guild = await self.storage.settings("guild", interaction.guild_id)
        channel = await self.storage.settings("channel", interaction.channel_id or 0)
        policy = await resolve_policy(
            self.storage,
            self.config,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or 0,
        )
        lines = []
        for key, spec in SETTINGS.items():
            source = "channel" if key in channel else "server" if key in guild else "default"
            value = policy.values.get(key)
            if key == "allowed_channels":
                value = ", ".join(f"<#{c}>" for c in value) if value else "all"
            lines.append(
                f"`{key}` = {value if value is not None else '—'} ({source}) — {spec.help}; "
                f"{setting_allowed(key)}"
            )
        await interaction.response.send_message("\n".join(lines)[:1990], ephemeral=True)

    @settings.command(name="set", description="Change a default or limit for the server or this channel")
    @admins_only("view or change Omost settings")
    @app_commands.describe(
        key="which setting", value="the new value", scope="the whole server or this channel"
    )
    @app_commands.choices(key=[app_commands.Choice(name=k, value=k) for k in SETTINGS])
    async def settings_set(
        self, interaction: Interaction, key: str, value: str, scope: Literal["guild", "channel"] = "guild"
    ) -> None:
        parsed = parse_setting(key, value)
        if scope not in SETTINGS[key].scopes:
            raise OmostError(
                f"{key} can only be set for the whole server",
                parameter="scope",
                value=scope,
                allowed=SETTINGS[key].scopes,
            )
        scope_id = interaction.guild_id if scope == "guild" else interaction.channel_id
        assert scope_id is not None
        await self.storage.set_setting(scope, scope_id, key, parsed)
        where = "this server" if scope == "guild" else f"<#{scope_id}>"
        await interaction.response.send_message(f"✅ `{key}` is now `{value}` in {where}.", ephemeral=True)

    @settings.command(name="reset", description="Go back to the default of a setting")
    @admins_only("view or change Omost settings")
    @app_commands.describe(key="which setting", scope="the whole server or this channel")
    @app_commands.choices(key=[app_commands.Choice(name=k, value=k) for k in SETTINGS])
    async def settings_reset(
        self, interaction: Interaction, key: str, scope: Literal["guild", "channel"] = "guild"
    ) -> None:
        scope_id = interaction.guild_id if scope == "guild" else interaction.channel_id
        assert scope_id is not None
        removed = await self.storage.delete_setting(scope, scope_id, key)
        text = f"↩️ `{key}` is back to its default." if removed else f"`{key}` was not set there."
        await interaction.response.send_message(text, ephemeral=True)

    # -- replies -------------------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.reference is not None and not message.author.bot:
            await self.actions.on_reply(message)


async def setup(bot: OmostBot) -> None:
    omost = Omost(bot)
    await bot.add_cog(omost)
    # The region editor answers the results' Edit regions button through the same actions registry.
    await bot.add_cog(
        OmostEditor(
            bot, storage=bot.storage, config=bot.config, actions=omost.actions, tokens=bot.clip_tokens
        )
    )
