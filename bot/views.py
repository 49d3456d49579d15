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

log = logging.getLogger(__name__)

BUTTON_COG = "Omost"  # the cog that answers clicks (cogs/omost.py)

# action -> (style, label, emoji)
BUTTONS: dict[str, tuple[discord.ButtonStyle, str, str]] = {
    "reroll": (discord.ButtonStyle.primary, "Reroll", "🎲"),
    "layout": (discord.ButtonStyle.secondary, "Layout & masks", "🧩"),
    "edit": (discord.ButtonStyle.secondary, "Edit", "✏️"),
    "regions": (discord.ButtonStyle.secondary, "Edit regions", "🗺️"),
    "delete": (discord.ButtonStyle.danger, "Delete", "🗑️"),
    "cancel": (discord.ButtonStyle.danger, "Cancel", "✖️"),
}
RESULT_ACTIONS = ("reroll", "layout", "edit", "regions", "delete")


class ButtonHandler(Protocol):
    """What answers a click on a job's button (the ``/omost`` cog)."""

    async def on_job_button(
        self, interaction: discord.Interaction[Any], action: str, job_id: int
    ) -> None: ...


def custom_id(action: str, job_id: int) -> str:
    return f"omost:{action}:{job_id}"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"omost:(?P<action>reroll|layout|edit|regions|delete|cancel):(?P<job_id>\d+)",
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


def result_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in RESULT_ACTIONS:
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
