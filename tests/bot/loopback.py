"""A small fake Discord on loopback (aiohttp): REST plus a gateway websocket, enough for one slash command.

Unlike simcord, discord.py's own HTTP client and gateway code run unchanged against it: multipart
uploads, the interaction callback with ``with_response``, webhook edits and the gateway handshake.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

EPOCH = "2026-01-01T00:00:00+00:00"
ALL_PERMISSIONS = str((1 << 50) - 1)


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py wants the content type exactly "application/json" (no charset suffix).
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class FakeDiscord:
    app_id: int = 1000
    guild_id: int = 2000
    channel_id: int = 3000
    bot_id: int = 1000
    user_id: int = 4000
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    uploads: dict[int, list[Upload]] = field(default_factory=dict)  # message id -> files of its last write
    requests: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (method, path, JSON body)
    commands: list[dict[str, Any]] = field(default_factory=list)
    interactions: dict[str, int] = field(default_factory=dict)  # token -> original message id
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(10_000))
    _socket: web.WebSocketResponse | None = None
    _sequence: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- objects ----------------------------------------------------------------------------------------

    def user(self, user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name,
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    def member(self, user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
        return {
            "user": self.user(user_id, name, bot=bot),
            "roles": [],
            "joined_at": EPOCH,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "pending": False,
        }

    def channel(self) -> dict[str, Any]:
        return {
            "id": str(self.channel_id),
            "type": 0,
            "guild_id": str(self.guild_id),
            "name": "studio",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
        }

    def guild(self) -> dict[str, Any]:
        everyone = {
            "id": str(self.guild_id),
            "name": "@everyone",
            "permissions": ALL_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return {
            "id": str(self.guild_id),
            "name": "Studio",
            "icon": None,
            "owner_id": str(self.user_id),
            "roles": [everyone],
            "emojis": [],
            "stickers": [],
            "features": [],
            "channels": [self.channel()],
            "threads": [],
            "members": [self.member(self.bot_id, "omost", bot=True), self.member(self.user_id, "alice")],
            "member_count": 2,
            "large": False,
            "unavailable": False,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "system_channel_flags": 0,
            "nsfw_level": 0,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": EPOCH,
        }

    def _message(
        self, message_id: int, body: dict[str, Any], uploads: list[Upload], *, webhook: bool
    ) -> dict[str, Any]:
        old = self.messages.get(message_id, {})
        attachments = (
            [
                {
                    "id": str(next(self._ids)),
                    "filename": u.filename,
                    "size": len(u.data),
                    "url": f"{self.api}/files/{u.filename}",
                    "proxy_url": f"{self.api}/files/{u.filename}",
                }
                for u in uploads
            ]
            if uploads or "attachments" in body
            else old.get("attachments", [])
        )
        message = {
            "id": str(message_id),
            "channel_id": str(self.channel_id),
            "guild_id": str(self.guild_id),
            "author": self.user(self.bot_id, "omost", bot=True),
            "content": body.get("content", old.get("content", "")),
            "timestamp": EPOCH,
            "edited_timestamp": EPOCH if old else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": body.get("embeds", old.get("embeds", [])) or [],
            "components": body.get("components", old.get("components", [])) or [],
            "pinned": False,
            "type": 0,
            "flags": body.get("flags", 0) or 0,
        }
        if webhook:
            message["webhook_id"] = str(self.app_id)
            message["application_id"] = str(self.app_id)
        self.messages[message_id] = message
        if uploads:
            self.uploads[message_id] = uploads
        self.changed.set()
        return message

    # -- REST -------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
        if request.content_type.startswith("multipart/"):
            body: dict[str, Any] = {}
            uploads = []
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                else:
                    uploads.append(Upload(part.filename or "file", bytes(await part.read())))
            return body, uploads
        text = await request.text()
        return (json.loads(text) if text else {}), []

    async def _rest(self, request: web.Request) -> web.Response:
        path, method = request.match_info["path"], request.method
        self.requests.append((method, path))
        parts = path.split("/")
        body, uploads = await self._body(request)
        if isinstance(body, dict):
            self.bodies.append((method, path, body))
        if path == "users/@me":
            return _json(self.user(self.bot_id, "omost", bot=True))
        if path == "oauth2/applications/@me":
            return _json(
                {
                    "id": str(self.app_id),
                    "name": "omost",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "verify_key": "0" * 64,
                    "owner": self.user(self.user_id, "alice"),
                    "flags": 0,
                    "team": None,
                    "interactions_endpoint_url": None,
                    "redirect_uris": [],
                }
            )
        if method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            self.commands = [
                {**c, "id": str(next(self._ids)), "application_id": str(self.app_id), "version": "1"}
                for c in body
            ]
            return _json(self.commands)
        if method == "POST" and parts[0] == "interactions" and parts[-1] == "callback":
            token = parts[2]
            data = body.get("data", {})
            message_id = next(self._ids)
            self.interactions[token] = message_id
            message = self._message(message_id, data, uploads, webhook=True)
            return _json(
                {
                    "interaction": {
                        "id": parts[1],
                        "type": 2,
                        "response_message_id": str(message_id),
                        "response_message_loading": False,
                        "response_message_ephemeral": False,
                    },
                    "resource": {"type": body.get("type", 4), "message": message},
                }
            )
        if parts[0] == "webhooks" and len(parts) >= 5 and parts[3] == "messages":
            token = parts[2]
            message_id = self.interactions[token] if parts[4] == "@original" else int(parts[4])
            if method == "GET":
                return _json(self.messages[message_id])
            if method == "PATCH":
                return _json(self._message(message_id, body, uploads, webhook=True))
        if parts[0] == "channels" and len(parts) >= 3 and parts[2] == "messages":
            if method == "POST":
                return _json(self._message(next(self._ids), body, uploads, webhook=False))
            if method == "PATCH":
                return _json(self._message(int(parts[3]), body, uploads, webhook=False))
        return _json(
            {"message": f"not implemented in the loopback fake: {method} {path}", "code": 0}, status=404
        )

    # -- gateway ----------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 45_000}})
        async for frame in socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            payload = json.loads(frame.data)
            if payload["op"] == 1:
                await socket.send_json({"op": 11})
            elif payload["op"] == 2:  # IDENTIFY
                await self.dispatch(
                    "READY",
                    {
                        "v": 10,
                        "user": self.user(self.bot_id, "omost", bot=True),
                        "session_id": "loopback",
                        "resume_gateway_url": self.gateway,
                        "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                        "application": {"id": str(self.app_id), "flags": 0},
                        "private_channels": [],
                        "relationships": [],
                    },
                )
                await self.dispatch("GUILD_CREATE", self.guild())
        return socket

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        assert self._socket is not None, "the bot is not connected"
        self._sequence += 1
        await self._socket.send_json({"op": 0, "t": event, "s": self._sequence, "d": data})

    async def slash(self, subcommand: str, **options: Any) -> str:
        """Send an /omost <subcommand> interaction; returns its token."""
        interaction_id = next(self._ids)
        token = f"token{interaction_id}"
        command = next(c for c in self.commands if c["name"] == "omost")
        types = {str: 3, int: 4, bool: 5, float: 10}
        await self.dispatch(
            "INTERACTION_CREATE",
            {
                "id": str(interaction_id),
                "application_id": str(self.app_id),
                "type": 2,
                "token": token,
                "version": 1,
                "data": {
                    "id": command["id"],
                    "name": "omost",
                    "type": 1,
                    "guild_id": str(self.guild_id),
                    "options": [
                        {
                            "name": subcommand,
                            "type": 1,
                            "options": [
                                {"name": k, "type": types[type(v)], "value": v} for k, v in options.items()
                            ],
                        }
                    ],
                },
                "guild_id": str(self.guild_id),
                "channel_id": str(self.channel_id),
                "channel": self.channel(),
                "member": {**self.member(self.user_id, "alice"), "permissions": ALL_PERMISSIONS},
                "app_permissions": ALL_PERMISSIONS,
                "locale": "en-US",
                "guild_locale": "en-US",
                "entitlements": [],
                "authorizing_integration_owners": {"0": str(self.guild_id)},
                "context": 0,
                "attachment_size_limit": 10 * 1024 * 1024,
            },
        )
        return token

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)
