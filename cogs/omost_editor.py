"""The region editor in Discord (issue 12): an ephemeral Components V2 message per editor, drawn from the
state ``bot.region_editor`` keeps in SQLite; this module only parses clicks and forms and redraws.

The message: a text block (the selected region's names and texts, and the last edit's correction or
refusal), the labelled region map (numbers on boxes over the colour sketch, the selection in white), then
six action rows: the region select, the location, offset and area selects (the canvas's 9 names each),
Closer / Farther / Text… / Style… / Colour…, and Add region / Delete region / Render / New seed. A classic
message allows 5 action rows, and 4 selects with 9 buttons need 6: Components V2 (``LayoutView``) allows 40
components in all.

Every control is a ``DynamicItem`` whose custom_id is ``omost:ed:<editor id>:<what>``, so it answers after
a restart. The forms' custom_id is ``omost:edform:<editor id>:<form>:<region number>`` and their fields'
custom_ids are the canvas's field names; the cog's ``on_interaction`` listener answers every submission from
those ids alone, so a form left open across a restart is applied when it is sent, like a click.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import discord
from discord.ext import commands

from bot import formatting
from bot.access import require_channel_allowed
from bot.config import BotConfig
from bot.region_editor import (
    COLOR_FIELD,
    MAX_FIELD_CHARS,
    STYLE_FORM,
    TEXT_FORM,
    EditorState,
    RegionEditor,
    prefilled,
)
from bot.settings import EditorAccess, resolve_policy
from bot.storage import JobRecord, Storage
from bot.views import send_error
from cogs.omost_actions import OmostActions, new_seed
from omost_engine.clip_tokens import ClipTokenCounter
from omost_engine.editing import GLOBAL_TEXT_FIELDS, CanvasSpec, RegionSpec
from omost_engine.errors import OmostError
from omost_engine.png import png_bytes
from omost_engine.preview import masks_image
from omost_engine.tables import AREAS, LOCATIONS, OFFSETS

log = logging.getLogger(__name__)

EDITOR_COG = "OmostEditor"
MAP_NAME = "regions.png"
MAP_SIDE = 512  # the map's longer side, in pixels
SELECT_OPTIONS = 25  # Discord's most options in one select
LABEL_CHARS = 100  # Discord's longest option label
TEXT_CHARS = 3800  # the text block (Discord: 4,000 characters of text per message)
COLOR_CHARS = 100

BUTTON_ACTIONS = ("closer", "farther", "text", "style", "color", "add", "delete", "render", "seed")
SELECT_FIELDS = ("region", "location", "offset", "area")
FORMS = ("text", "style", "color")
NAMES = {"location": LOCATIONS, "offset": OFFSETS, "area": AREAS}
FORM_ID = re.compile(r"omost:edform:(?P<editor_id>\d+):(?P<form>text|style|color):(?P<number>\d+)")

# action -> (style, label) of the editor's buttons, in their rows.
BUTTON_ROWS: tuple[tuple[tuple[str, discord.ButtonStyle, str], ...], ...] = (
    (
        ("closer", discord.ButtonStyle.secondary, "Closer"),
        ("farther", discord.ButtonStyle.secondary, "Farther"),
        ("text", discord.ButtonStyle.primary, "Text…"),
        ("style", discord.ButtonStyle.secondary, "Style…"),
        ("color", discord.ButtonStyle.secondary, "Colour…"),
    ),
    (
        ("add", discord.ButtonStyle.secondary, "Add region"),
        ("delete", discord.ButtonStyle.danger, "Delete region"),
        ("render", discord.ButtonStyle.success, "Render"),
        ("seed", discord.ButtonStyle.secondary, "New seed"),
    ),
)
REGION_ONLY = {"closer", "farther", "style", "delete"}  # the global description has no box or style


def control_id(editor_id: int, what: str) -> str:
    return f"omost:ed:{editor_id}:{what}"


class EditorButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"omost:ed:(?P<editor_id>\d+):(?P<action>{'|'.join(BUTTON_ACTIONS)})",
):
    def __init__(
        self, editor_id: int, action: str, *, label: str = "", style: Any = None, disabled: bool = False
    ):
        super().__init__(
            discord.ui.Button(
                label=label or action,
                style=style or discord.ButtonStyle.secondary,
                custom_id=control_id(editor_id, action),
                disabled=disabled,
            )
        )
        self.editor_id = editor_id
        self.action = action

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> EditorButton:
        return cls(int(match["editor_id"]), match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _hand_over(
            interaction, lambda cog: cog.on_control(interaction, self.editor_id, self.action, [])
        )


class EditorSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=rf"omost:ed:(?P<editor_id>\d+):(?P<field>{'|'.join(SELECT_FIELDS)})",
):
    def __init__(
        self,
        editor_id: int,
        field: str,
        options: list[discord.SelectOption] | None = None,
        *,
        placeholder: str | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(
            discord.ui.Select(
                custom_id=control_id(editor_id, field),
                options=options or [discord.SelectOption(label=field)],
                placeholder=placeholder,
                disabled=disabled,
            )
        )
        self.editor_id = editor_id
        self.field = field

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> EditorSelect:
        return cls(int(match["editor_id"]), match["field"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        data: Any = interaction.data or {}  # a component interaction's data: {"values": [...], ...}
        values = [str(v) for v in data.get("values", [])]
        await _hand_over(
            interaction, lambda cog: cog.on_control(interaction, self.editor_id, self.field, values)
        )


async def _hand_over(
    interaction: discord.Interaction[Any], answer: Callable[[OmostEditor], Awaitable[None]]
) -> None:
    cog = interaction.client.get_cog(EDITOR_COG)
    if not isinstance(cog, OmostEditor):  # unloaded (a reload in progress)
        await send_error(interaction, "Omost is restarting; please try again in a moment")
        return
    await answer(cog)


class EditorForm(discord.ui.Modal):
    """A form of the editor. Its submission is answered by ``OmostEditor.on_interaction`` from the custom
    ids alone (so the same way before and after a restart); this object only shows the fields."""

    def __init__(self, title: str, custom_id: str, fields: Mapping[str, tuple[str, str, bool]]) -> None:
        super().__init__(title=title[:45], custom_id=custom_id, timeout=900)
        for name, (label, value, paragraph) in fields.items():
            self.add_item(
                discord.ui.TextInput(
                    label=label[:45],
                    custom_id=name,
                    default=value or None,
                    required=False,  # an empty description is refused by the canvas, with its reason
                    style=discord.TextStyle.paragraph if paragraph else discord.TextStyle.short,
                    max_length=COLOR_CHARS if name == COLOR_FIELD else MAX_FIELD_CHARS,
                )
            )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        """Nothing here: the listener answers (see the class docstring)."""


# -- drawing ---------------------------------------------------------------------------------------------


def _region_head(spec: CanvasSpec, number: int) -> str:
    if number == 0:
        return "**0 · global description** (the whole canvas)"
    r = spec.region(number)
    count = len(spec.regions)
    if count == 1:
        depth = "the only region"
    elif number in (1, count):
        depth = f"the {'farthest from' if number == 1 else 'nearest to'} the viewer"
    else:
        depth = f"drawn {number} of {count}, far to near"
    offset = "" if r.offset == "no offset" else f" {r.offset}"
    return f"**{number} · {r.location}{offset}, {r.area}** ({depth})"


def _texts(spec: CanvasSpec, number: int) -> list[tuple[str, str]]:
    if number == 0:
        g = spec.global_
        return [
            ("colour", g.color),
            ("description", g.description),
            ("detailed", " · ".join(g.detailed_descriptions)),
            ("tags", g.tags),
        ]
    r: RegionSpec = spec.region(number)
    return [
        ("colour", r.color),
        ("description", r.description),
        ("detailed", " · ".join(r.detailed_descriptions)),
        ("tags", r.tags),
        ("atmosphere", r.atmosphere),
        ("style", r.style),
        ("quality", r.quality_meta),
    ]


def editor_text(state: EditorState) -> str:
    seed = "new seed" if state.record.new_seed else f"seed {state.job.render_params.seed}"
    lines = [
        f"### 🗺️ Region editor · job #{state.job.id} · {len(state.spec.regions)} region(s) · Render: {seed}"
    ]
    if state.note:
        lines.append(("⚠️ " if state.refused else "✏️ ") + formatting.shorten(state.note, 600))
    lines.append(_region_head(state.spec, state.selected))
    for name, value in _texts(state.spec, state.selected):
        if value:
            lines.append(f"{name}: {formatting.shorten(value, 400)}")
    return "\n".join(lines)[:TEXT_CHARS]


def map_png(state: EditorState) -> bytes:
    """The labelled region map at the result's aspect ratio, the selected region outlined in white."""
    params = state.job.render_params
    scale = MAP_SIDE / max(params.width, params.height)
    size = (max(64, round(params.width * scale)), max(64, round(params.height * scale)))
    return png_bytes(masks_image(state.spec.layout(), size, selected=state.selected or None))


async def map_file(state: EditorState) -> discord.File:
    # Drawing and encoding the map takes tens of milliseconds: off the event loop, as result images are.
    png = await asyncio.to_thread(map_png, state)
    return discord.File(io.BytesIO(png), filename=MAP_NAME)


def _region_options(spec: CanvasSpec, selected: int) -> list[discord.SelectOption]:
    """Every region when they fit in one select, else a window of 25 around the selection."""
    total = len(spec.regions) + 1
    start = max(0, min(selected - SELECT_OPTIONS // 2, total - SELECT_OPTIONS))
    return [
        discord.SelectOption(label=spec.label(n)[:LABEL_CHARS], value=str(n), default=n == selected)
        for n in range(start, min(total, start + SELECT_OPTIONS))
    ]


def _name_select(editor_id: int, field: str, region: RegionSpec | None) -> EditorSelect:
    current = getattr(region, field) if region is not None else None
    options = [
        discord.SelectOption(label=f"{field}: {name}"[:LABEL_CHARS], value=name, default=name == current)
        for name in NAMES[field]
    ]
    placeholder = f"{field}: the global description covers the whole canvas" if region is None else None
    return EditorSelect(editor_id, field, options, placeholder=placeholder, disabled=region is None)


def editor_view(state: EditorState) -> discord.ui.LayoutView:
    editor_id, number = state.record.id, state.selected
    region = state.spec.region(number) if number else None
    view = discord.ui.LayoutView(timeout=None)
    view.add_item(discord.ui.TextDisplay(editor_text(state)))
    view.add_item(discord.ui.MediaGallery(discord.MediaGalleryItem(f"attachment://{MAP_NAME}")))
    rows: list[discord.ui.Item[Any]] = [
        EditorSelect(editor_id, "region", _region_options(state.spec, number)),
        *(_name_select(editor_id, field, region) for field in ("location", "offset", "area")),
    ]
    for item in rows:
        view.add_item(discord.ui.ActionRow(item))
    for buttons in BUTTON_ROWS:
        row: discord.ui.ActionRow[Any] = discord.ui.ActionRow()
        for action, style, label in buttons:
            if action == "seed":
                on = state.record.new_seed
                style, label = (
                    (discord.ButtonStyle.primary if on else style),
                    f"New seed: {'on' if on else 'off'}",
                )
            row.add_item(
                EditorButton(
                    editor_id,
                    action,
                    label=label,
                    style=style,
                    disabled=number == 0 and action in REGION_ONLY,
                )
            )
        view.add_item(row)
    return view


async def editor_message(state: EditorState) -> dict[str, Any]:
    return {"view": editor_view(state), "attachments": [await map_file(state)]}


def form_for(state: EditorState, form: str) -> EditorForm:
    """The Text…, Style… or Colour… form of the selected region, filled with its current values."""
    number, spec = state.selected, state.spec
    custom_id = f"omost:edform:{state.record.id}:{form}:{number}"
    where = "global description" if number == 0 else f"region {number}"
    if form == "color":
        color = spec.global_.color if number == 0 else spec.region(number).color
        fields = {COLOR_FIELD: ("HTML colour name (e.g. skyblue)", color, False)}
        return EditorForm(f"Colour of the {where}", custom_id, fields)
    current = spec.global_ if number == 0 else spec.region(number)
    names = TEXT_FORM if form == "text" else STYLE_FORM
    fields = {
        name: (label, prefilled(current, name), name == "detailed_descriptions")
        for name, label in names.items()
        if number != 0 or name in GLOBAL_TEXT_FIELDS
    }
    return EditorForm(f"{'Text' if form == 'text' else 'Style'} of the {where}", custom_id, fields)


def submitted_values(components: Any) -> dict[str, str]:
    """custom_id -> value of every text input in a modal submission (rows or labels, as Discord nests them)."""
    found: dict[str, str] = {}
    stack = list(components or [])
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("custom_id"), str) and isinstance(node.get("value"), str):
            found[node["custom_id"]] = node["value"]
        stack.extend(node.get("components") or [])
        if isinstance(node.get("component"), dict):
            stack.append(node["component"])
    return found


# -- the cog ---------------------------------------------------------------------------------------------


class OmostEditor(commands.Cog, name=EDITOR_COG):
    """Opens editors (the results' Edit regions button), answers their controls and forms."""

    def __init__(
        self,
        bot: commands.Bot,
        *,
        storage: Storage,
        config: BotConfig,
        actions: OmostActions,
        tokens: ClipTokenCounter | None = None,
    ) -> None:
        self.bot = bot
        self.storage = storage
        self.config = config
        self.actions = actions
        self.editor = RegionEditor(storage, tokens=tokens)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(EditorButton, EditorSelect)
        self.actions.buttons["regions"] = self.open_editor

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(EditorButton, EditorSelect)
        self.actions.buttons.pop("regions", None)

    async def _access(self, interaction: discord.Interaction[Any]) -> EditorAccess:
        policy = await resolve_policy(
            self.storage, self.config, guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0
        )
        require_channel_allowed(policy, interaction.channel)
        return policy.editor_access

    async def open_editor(self, interaction: discord.Interaction[Any], job: JobRecord) -> None:
        """The results' Edit regions button: a new editor, shown to the clicker only."""
        state = await self.editor.open(
            job.id,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or job.channel_id,
            access=await self._access(interaction),
        )
        await interaction.response.send_message(
            view=editor_view(state), file=await map_file(state), ephemeral=True
        )

    async def on_control(
        self, interaction: discord.Interaction[Any], editor_id: int, what: str, values: list[str]
    ) -> None:
        try:
            state = await self.editor.load(
                editor_id, user_id=interaction.user.id, access=await self._access(interaction)
            )
            if what in FORMS:
                await interaction.response.send_modal(form_for(state, what))
            elif what == "render":
                await self._render(interaction, state)
            else:
                state = await self._change(state, what, values)
                await interaction.response.edit_message(**await editor_message(state))
        except OmostError as exc:
            await send_error(interaction, str(exc))
        except Exception:  # a bug: logged with its traceback; the user still gets one line
            log.exception("the %s control of region editor #%s failed", what, editor_id)
            await send_error(
                interaction, "something went wrong on my side; the error was logged. Please try again"
            )

    async def _change(self, state: EditorState, what: str, values: list[str]) -> EditorState:
        if what in SELECT_FIELDS:
            if len(values) != 1:
                raise OmostError(f"choose one {what}", parameter=what)
            if what == "region":
                return await self.editor.select(state, int(values[0]) if values[0].isdigit() else -1)
            return await self.editor.set_box(state, **{what: values[0]})
        changes = {
            "closer": self.editor.closer,
            "farther": self.editor.farther,
            "add": self.editor.add_region,
            "delete": self.editor.delete_region,
            "seed": self.editor.toggle_new_seed,
        }
        return await changes[what](state)

    async def _render(self, interaction: discord.Interaction[Any], state: EditorState) -> None:
        policy = await self.actions.admit_interaction(interaction)
        request = await self.editor.render_request(
            state,
            policy,
            user_id=interaction.user.id,
            requester=interaction.user.display_name,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id or state.job.channel_id,
            new_seed=new_seed,
        )
        await self.actions.start_job(interaction, request, policy)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        """A submitted editor form (before or after a restart: see the module docstring)."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: Any = interaction.data or {}
        match = FORM_ID.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        try:
            await self._form(interaction, match, submitted_values(data.get("components")))
        except OmostError as exc:
            await send_error(interaction, str(exc))
        except Exception:  # a bug: logged with its traceback; the user still gets one line
            log.exception("the form %s of region editor #%s failed", match["form"], match["editor_id"])
            await send_error(
                interaction, "something went wrong on my side; the error was logged. Please try again"
            )

    async def _form(
        self, interaction: discord.Interaction[Any], match: re.Match[str], values: dict[str, str]
    ) -> None:
        state = await self.editor.load(
            int(match["editor_id"]), user_id=interaction.user.id, access=await self._access(interaction)
        )
        number = int(match["number"])
        if match["form"] == "color":
            state = await self.editor.set_color(state, number, values.get(COLOR_FIELD, ""))
        else:
            state = await self.editor.set_texts(state, number, values)
        await interaction.response.edit_message(**await editor_message(state))
