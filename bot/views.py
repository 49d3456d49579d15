"""Buttons that survive restarts: all their state is in the custom_id (``omost:<action>:<job id>``) and SQLite."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    from bot.bot import OmostBot

# action -> (style, label, emoji)
BUTTONS: dict[str, tuple[discord.ButtonStyle, str, str]] = {
    "reroll": (discord.ButtonStyle.primary, "Reroll", "🎲"),
    "layout": (discord.ButtonStyle.secondary, "Layout & masks", "🧩"),
    "edit": (discord.ButtonStyle.secondary, "Edit", "✏️"),
    "delete": (discord.ButtonStyle.danger, "Delete", "🗑️"),
    "cancel": (discord.ButtonStyle.danger, "Cancel", "✖️"),
}
RESULT_ACTIONS = ("reroll", "layout", "edit", "delete")


def custom_id(action: str, job_id: int) -> str:
    return f"omost:{action}:{job_id}"


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"omost:(?P<action>reroll|layout|edit|delete|cancel):(?P<job_id>\d+)",
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

    async def callback(self, interaction: discord.Interaction[OmostBot]) -> None:
        await interaction.client.flows.on_button(interaction, self.action, self.job_id)


def result_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in RESULT_ACTIONS:
        view.add_item(JobButton(action, job_id))
    return view


def status_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id))
    return view


class EditModal(discord.ui.Modal):
    """Asks what to change; the answer becomes the next turn after the result's turn."""

    change: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
        label="What should change?",
        style=discord.TextStyle.paragraph,
        max_length=2000,
        placeholder="e.g. make it night time and add a full moon",
    )

    def __init__(self, job_id: int) -> None:
        super().__init__(title=f"Edit job #{job_id}", custom_id=f"omost:editmodal:{job_id}", timeout=900)
        self.job_id = job_id

    async def on_submit(self, interaction: discord.Interaction[OmostBot]) -> None:  # type: ignore[override]
        await interaction.client.flows.edit_submitted(interaction, self.job_id, self.change.value)
