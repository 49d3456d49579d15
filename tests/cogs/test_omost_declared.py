"""What Discord is told to enforce (guild-only, declared admin and owner checks), the one registry of
button actions, and the custom_id format of buttons on results posted before this change."""

from __future__ import annotations

import pytest
from discord import app_commands
from simenv import World

from bot.views import BUTTON_COG, BUTTONS, JobButton, custom_id, result_view, status_view


def test_omost_is_declared_guild_only(world: World) -> None:
    group = world.bot.tree.get_command("omost")
    assert isinstance(group, app_commands.Group) and group.guild_only
    payload = group.to_dict(world.bot.tree)
    assert payload["contexts"] == [0]  # Discord's context 0: a server (not a DM, not a private channel)


def _checked(world: World, path: str) -> bool:
    group = world.bot.tree.get_command("omost")
    assert isinstance(group, app_commands.Group)
    command: app_commands.Command | app_commands.Group | None = group
    for name in path.split():
        assert isinstance(command, app_commands.Group)
        command = command.get_command(name)
    assert isinstance(command, app_commands.Command)
    return bool(command.checks)


def test_admin_and_owner_commands_declare_their_checks_and_the_others_do_not(world: World) -> None:
    for path in ("status", "settings show", "settings set", "settings reset", "sync", "pause", "resume"):
        assert _checked(world, path), path
    for path in ("compose", "render", "new", "history", "queue", "cancel", "help"):
        assert not _checked(world, path), path


async def test_a_refused_owner_command_is_one_ephemeral_line_from_the_tree_handler(world: World) -> None:
    result = await world.alice.slash(world.channel, "omost pause")
    assert result.ephemeral and result.response.content == "⚠️ only the bot's owners can do that"
    assert not world.bot.backend._line.paused  # the check ran before the command: nothing was paused


def test_every_button_action_has_exactly_one_handler(world: World) -> None:
    cog = world.bot.get_cog(BUTTON_COG)
    assert cog is not None
    assert set(cog.actions.buttons) == set(BUTTONS)  # type: ignore[attr-defined]
    assert all(callable(handler) for handler in cog.actions.buttons.values())  # type: ignore[attr-defined]


@pytest.mark.parametrize("action", sorted(BUTTONS))
def test_custom_ids_keep_the_format_of_results_posted_before(action: str) -> None:
    stored = f"omost:{action}:1234"  # what messages posted by earlier versions carry
    assert custom_id(action, 1234) == stored
    match = JobButton.__discord_ui_compiled_template__.fullmatch(stored)
    assert match is not None and match["action"] == action and match["job_id"] == "1234"
    views = (result_view(1234), result_view(1234, count=4), status_view(1234))  # a grid has its own buttons
    drawn = [item.custom_id for view in views for item in view.children]
    assert stored in drawn
