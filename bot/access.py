"""Who may do what where: the bot's channel permissions, admins, allowed channels, rate limits."""

from __future__ import annotations

import discord

from bot.settings import Policy
from bot.storage import Storage
from omost_engine.errors import OmostError

# What the bot needs in a channel to show progress and deliver results, with the names Discord shows.
REQUIRED_BOT_PERMISSIONS: dict[str, str] = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
    "read_message_history": "Read Message History",
}


def missing_bot_permissions(permissions: discord.Permissions) -> list[str]:
    return [label for name, label in REQUIRED_BOT_PERMISSIONS.items() if not getattr(permissions, name)]


def require_bot_permissions(permissions: discord.Permissions) -> None:
    missing = missing_bot_permissions(permissions)
    if missing:
        raise OmostError(
            f"I am missing the {', '.join(missing)} permission{'s' if len(missing) > 1 else ''} in this channel; "
            "ask an admin to grant them to my role (or pick another channel)",
            parameter="permissions",
            value=missing,
            allowed=list(REQUIRED_BOT_PERMISSIONS.values()),
        )


def is_admin(permissions: discord.Permissions) -> bool:
    """Admins of the bot: members who can manage the server."""
    return permissions.administrator or permissions.manage_guild


def require_channel_allowed(
    policy: Policy, channel: discord.abc.GuildChannel | discord.Thread | object
) -> None:
    channel_id = getattr(channel, "id", 0)
    parent_id = getattr(channel, "parent_id", None)
    if not policy.channel_allowed(channel_id, parent_id):
        places = ", ".join(f"<#{c}>" for c in policy.allowed_channels)
        raise OmostError(
            f"Omost is not enabled in this channel; use it in {places}",
            parameter="channel",
            value=channel_id,
            allowed=places,
        )


async def require_rate(storage: Storage, policy: Policy, *, user_id: int, window_s: float) -> None:
    recent = await storage.count_recent_jobs(user_id, since=storage.clock() - window_s)
    if recent >= policy.rate_limit:
        minutes = window_s / 60
        raise OmostError(
            f"you reached the limit of {policy.rate_limit} jobs per {minutes:g} minutes; try again later",
            parameter="rate_limit",
            value=recent,
            allowed=f"{policy.rate_limit} per {minutes:g} minutes",
        )
