"""Buttons that survive restarts: all their state is in the custom_id (``omost:<action>:<job id>``) and SQLite.

This module only draws them and reads their custom_id back; what a click does is the ``/omost`` cog's
(``cogs/omost_actions.py``): the button hands the click to the cog named ``BUTTON_COG``, whose registry maps
each action to its handler.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import discord

from omost_engine.variations import MAX_COUNT

log = logging.getLogger(__name__)

BUTTON_COG = "Omost"  # the cog that answers clicks (cogs/omost.py)

# action -> (style, label, emoji)
BUTTONS: dict[str, tuple[discord.ButtonStyle, str, str | None]] = {
    "reroll": (discord.ButtonStyle.primary, "Reroll", "🎲"),
    "variations": (discord.ButtonStyle.primary, "Variations", "🔀"),
    "upscale": (discord.ButtonStyle.primary, "Upscale", "🔍"),
    "layout": (discord.ButtonStyle.secondary, "Layout & masks", "🧩"),
    "edit": (discord.ButtonStyle.secondary, "Edit", "✏️"),
    "regions": (discord.ButtonStyle.secondary, "Edit regions", "🗺️"),
    "delete": (discord.ButtonStyle.danger, "Delete", "🗑️"),
    "cancel": (discord.ButtonStyle.danger, "Cancel", "✖️"),
    # A grid of variations: post image N as a result of its own, or four new seeds.
    **{f"pick{n}": (discord.ButtonStyle.secondary, str(n), None) for n in range(1, MAX_COUNT + 1)},
    "again": (discord.ButtonStyle.primary, "Again", "🔁"),
}
RESULT_ACTIONS = ("reroll", "variations", "upscale", "regions", "edit", "layout", "delete")
GRID_ACTIONS = ("again", "layout", "delete")  # after the pick buttons, one per image
PICK_PREFIX = "pick"


class ButtonHandler(Protocol):
    """What answers a click on a job's button (the ``/omost`` cog)."""

    async def on_job_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: int
    ) -> None: ...


def custom_id(action: str, job_id: int) -> str:
    return f"omost:{action}:{job_id}"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"omost:(?P<action>{'|'.join(BUTTONS)}):(?P<job_id>\d+)",
):
    def __init__(self, action: str, job_id: int) -> None:
        style, label, emoji = BUTTONS[action]
        super().__init__(
            discord.ui.Button(style=style, label=label, emoji=emoji, custom_id=custom_id(action, job_id))
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        handler: ButtonHandler | None = interaction.client.get_cog(BUTTON_COG)
        if handler is None:  # the cog is unloaded (a reload in progress)
            await send_error(interaction, "Omost is restarting; please try again in a moment")
            return
        await handler.on_job_button(interaction, self.action, self.job_id)


def pick_index(action: str) -> int | None:
    """The 0-based image a pick button names ("pick2" -> 1); None for other actions."""
    if action.startswith(PICK_PREFIX) and action[len(PICK_PREFIX) :].isdigit():
        return int(action[len(PICK_PREFIX) :]) - 1
    return None


def result_actions(*, count: int = 1, upscaled: bool = False) -> tuple[str, ...]:
    """The buttons of a result: a grid's pick buttons (one per image), Again, Layout, Delete; a single
    image's Reroll, Variations, Upscale (not on an upscaled image), Layout, Edit, Delete."""
    if count > 1:
        return tuple(f"{PICK_PREFIX}{n}" for n in range(1, count + 1)) + GRID_ACTIONS
    return tuple(a for a in RESULT_ACTIONS if not (upscaled and a == "upscale"))


def result_view(job_id: int, *, count: int = 1, upscaled: bool = False) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in result_actions(count=count, upscaled=upscaled):
        view.add_item(JobButton(action, job_id))
    return view


def status_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id))
    return view


async def send_error(interaction: discord.Interaction[Any], message: str) -> None:
    """One ephemeral message, whether or not the interaction was answered already."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(f"⚠️ {message}", ephemeral=True)
        else:
            await interaction.response.send_message(f"⚠️ {message}", ephemeral=True)
    except discord.HTTPException as exc:  # the token expired or Discord is down: nothing else to try
        log.warning("could not send an error message: %s", exc)
