"""A small fake Discord on loopback (aiohttp): REST, a CDN for attachments and a gateway websocket.

Unlike simcord, discord.py's own HTTP client and gateway code run unchanged against it: multipart
uploads, the interaction callback with ``with_response``, webhook edits, followups, attachment
downloads, the gateway handshake and RESUME after a dropped connection.

Faults are injected by rules (``FakeDiscord.inject``): by method and path pattern (fnmatch) for REST
(``"PATCH", "webhooks/*/messages/*"``), the CDN (``"GET", "cdn/*"``) and the gateway (``"WS", "RESUME"``,
an opcode name the bot sends or an event name the fake dispatches). A rule answers with a status and a
body (429 with ``retry_after`` and the rate-limit headers), hangs, drops the connection, or (gateway)
closes the socket with a code; for a number of requests (``times``) or until removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import yarl
from aiohttp import web

EPOCH = "2026-01-01T00:00:00+00:00"
ALL_PERMISSIONS = str((1 << 50) - 1)
DISCORD_EPOCH_MS = 1_420_070_400_000
GATEWAY_OPS = {1: "HEARTBEAT", 2: "IDENTIFY", 6: "RESUME"}


def snowflakes() -> itertools.count:
    """Ids whose timestamp is now, so that discord.py sees fresh (not expired) interactions."""
    return itertools.count((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22)


@dataclass
class Fault:
    """One injected fault. ``status`` None with a hang: answer normally after the hang."""

    method: str  # GET, POST, PATCH, ... or "*"; "WS" for the gateway
    path: str  # fnmatch pattern: "webhooks/*/messages/*", "cdn/*", or for "WS" an op or event name
    status: int | None = None  # HTTP status; for "WS" the close code
    body: Any = None  # JSON body of the answer (default: Discord's shape for the status)
    retry_after: float | None = None  # a 429: the body's retry_after and the rate-limit headers
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds before answering (released when the fake stops)
    drop: bool = False  # close the TCP connection instead of answering
    times: int | None = 1  # requests it applies to; None: until removed
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        live = self.times is None or self.hits < self.times
        return live and self.method in ("*", method) and fnmatch.fnmatchcase(path, self.path)


@dataclass
class Exchange:
    """One request the fake answered (or dropped): what, when, with which status."""

    method: str
    path: str
    status: int | None  # None: dropped
    at: float  # time.monotonic() when answered
    body: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


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
    exchanges: list[Exchange] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    interactions: dict[str, int] = field(default_factory=dict)  # token -> original message id
    followups: dict[str, list[int]] = field(default_factory=dict)  # token -> followup message ids
    cdn: dict[str, bytes] = field(default_factory=dict)  # path after /cdn/ -> bytes
    faults: list[Fault] = field(default_factory=list)
    gateway_log: list[str] = field(default_factory=list)  # ops received and events sent, in order
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count = field(default_factory=snowflakes)
    _socket: web.WebSocketResponse | None = None
    _socket_request: web.Request | None = None
    _sequence: int = 0
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        app.router.add_get("/cdn/{path:.*}", self._cdn)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._stopping.set()  # hanging answers end now
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- faults -----------------------------------------------------------------------------------------

    def inject(self, method: str, path: str, **options: Any) -> Fault:
        """Add a fault rule (see ``Fault``); the first matching live rule applies."""
        fault = Fault(method, path, **options)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def _fault(self, method: str, path: str) -> Fault | None:
        fault = next((f for f in self.faults if f.matches(method, path)), None)
        if fault is not None:
            fault.hits += 1
        return fault

    async def _apply_fault(
        self, fault: Fault, request: web.Request, method: str, path: str
    ) -> web.Response | None:
        """The faulty answer; None to answer normally (after a hang)."""
        if fault.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.hang)
        if fault.drop or self._stopping.is_set():
            self.exchanges.append(Exchange(method, path, None, time.monotonic()))
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp ends the handler quietly; the client sees a disconnect
        if fault.status is None:
            return None
        status = fault.status
        headers = {"Content-Type": "application/json", **fault.headers}
        body = fault.body
        if status == 429:
            retry_after = fault.retry_after if fault.retry_after is not None else 0.1
            headers.update(
                {
                    "Via": "1.1 google",  # discord.py takes a 429 without it for a Cloudflare ban
                    "Retry-After": str(max(1, round(retry_after))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": str(retry_after),
                    "X-RateLimit-Bucket": "loopback",
                    "X-RateLimit-Scope": "user",
                }
            )
            if body is None:
                body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
        if body is None:
            body = {"message": f"{status}: injected by the loopback fake", "code": 0}
        self.exchanges.append(Exchange(method, path, status, time.monotonic()))
        self.changed.set()
        return web.Response(body=json.dumps(body).encode(), status=status, headers=headers)

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
        self,
        message_id: int,
        body: dict[str, Any],
        uploads: list[Upload],
        *,
        webhook: bool,
        author: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        old = self.messages.get(message_id, {})
        attachments = (
            [
                {
                    "id": str(next(self._ids)),
                    "filename": u.filename,
                    "size": len(u.data),
                    "url": self.store(f"bot/{message_id}/{u.filename}", u.data),
                    "proxy_url": f"{self.base}/cdn/bot/{message_id}/{u.filename}",
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
            "author": author or old.get("author") or self.user(self.bot_id, "omost", bot=True),
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
            "flags": body.get("flags", old.get("flags", 0)) or 0,
        }
        reference = body.get("message_reference", old.get("message_reference"))
        if reference:
            message["message_reference"] = reference
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
        fault = self._fault(method, path)
        if fault is not None:
            faulty = await self._apply_fault(fault, request, method, path)
            if faulty is not None:
                return faulty
        response = await self._answer(method, path, parts, body, uploads)
        self.exchanges.append(
            Exchange(
                method,
                path,
                response.status,
                time.monotonic(),
                body if isinstance(body, dict) else {},
                [u.filename for u in uploads],
            )
        )
        self.changed.set()
        return response

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        path = "cdn/" + request.match_info["path"]
        self.requests.append(("GET", path))
        fault = self._fault("GET", path)
        if fault is not None:
            faulty = await self._apply_fault(fault, request, "GET", path)
            if faulty is not None:
                return faulty
        data = self.cdn.get(request.match_info["path"])
        status = 200 if data is not None else 404
        self.exchanges.append(Exchange("GET", path, status, time.monotonic()))
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    async def _answer(
        self, method: str, path: str, parts: list[str], body: Any, uploads: list[Upload]
    ) -> web.Response:
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
        if parts[0] == "webhooks" and len(parts) == 3 and method == "POST":  # a followup
            token = parts[2]
            message_id = next(self._ids)
            self.followups.setdefault(token, []).append(message_id)
            return _json(self._message(message_id, body, uploads, webhook=True))
        if parts[0] == "webhooks" and len(parts) >= 5 and parts[3] == "messages":
            token = parts[2]
            message_id = self.interactions[token] if parts[4] == "@original" else int(parts[4])
            if message_id not in self.messages:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            if method == "GET":
                return _json(self.messages[message_id])
            if method == "PATCH":
                return _json(self._message(message_id, body, uploads, webhook=True))
            if method == "DELETE":
                del self.messages[message_id]
                return web.Response(status=204)
        if parts[0] == "channels" and len(parts) >= 3 and parts[2] == "messages":
            if method == "POST":
                return _json(self._message(next(self._ids), body, uploads, webhook=False))
            message_id = int(parts[3])
            if message_id not in self.messages:
                return _json({"message": "Unknown Message", "code": 10008}, status=404)
            if method == "PATCH":
                return _json(self._message(message_id, body, uploads, webhook=False))
        return _json(
            {"message": f"not implemented in the loopback fake: {method} {path}", "code": 0}, status=404
        )

    # -- gateway ----------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket, self._socket_request = socket, request
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 45_000}})
        async for frame in socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            payload = json.loads(frame.data)
            op = GATEWAY_OPS.get(payload["op"], str(payload["op"]))
            self.gateway_log.append(op)
            self.changed.set()
            fault = self._fault("WS", op)
            if fault is not None and await self._gateway_fault(fault):
                break
            if payload["op"] == 1:
                await socket.send_json({"op": 11})
            elif payload["op"] == 6:  # RESUME: nothing was missed here; say so
                await self.dispatch("RESUMED", {})
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

    async def _gateway_fault(self, fault: Fault) -> bool:
        """Apply a gateway rule; True when the connection is gone."""
        if fault.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), fault.hang)
        if fault.drop:
            self.cut_gateway()
            return True
        if fault.status is not None:
            await self.close_gateway(fault.status)
            return True
        return False

    async def close_gateway(self, code: int = 4000) -> None:
        """Close the bot's gateway connection with a close frame (4000: unknown error, the bot resumes)."""
        assert self._socket is not None, "the bot is not connected"
        self.gateway_log.append(f"close {code}")
        await self._socket.close(code=code)

    def cut_gateway(self) -> None:
        """Cut the gateway's TCP connection without a close frame."""
        assert self._socket_request is not None and self._socket_request.transport is not None
        self.gateway_log.append("cut")
        self._socket_request.transport.abort()

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        assert self._socket is not None, "the bot is not connected"
        fault = self._fault("WS", event)
        if fault is not None and await self._gateway_fault(fault):
            return
        self._sequence += 1
        self.gateway_log.append(event)
        await self._socket.send_json({"op": 0, "t": event, "s": self._sequence, "d": data})

    # -- users ------------------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def store(self, path: str, data: bytes) -> str:
        """Put a file on the CDN; returns its URL."""
        self.cdn[path] = data
        return f"{self.base}/cdn/{path}"

    def attachment(self, filename: str, data: bytes, *, size: int | None = None) -> dict[str, Any]:
        """A user's attachment on the CDN (``size``: what the attachment claims, default the real size)."""
        attachment_id = next(self._ids)
        url = self.store(f"attachments/{self.channel_id}/{attachment_id}/{filename}", data)
        content_type = "application/json" if filename.endswith(".json") else "application/octet-stream"
        return {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }

    async def user_message(
        self, content: str, *, reply_to: int | None = None, attachments: list[dict[str, Any]] | None = None
    ) -> int:
        """Alice sends a message (a reply to ``reply_to``); returns its id."""
        message_id = next(self._ids)
        body: dict[str, Any] = {"content": content, "attachments": []}
        if reply_to is not None:
            body["message_reference"] = {
                "message_id": str(reply_to),
                "channel_id": str(self.channel_id),
                "guild_id": str(self.guild_id),
            }
        message = self._message(message_id, body, [], webhook=False, author=self.user(self.user_id, "alice"))
        message["attachments"] = attachments or []
        message["type"] = 19 if reply_to is not None else 0
        member = self.member(self.user_id, "alice")
        del member["user"]
        await self.dispatch("MESSAGE_CREATE", {**message, "member": member})
        return message_id

    def replies_to(self, message_id: int) -> list[dict[str, Any]]:
        """The bot's messages replying to a message."""
        return [
            m
            for m in self.messages.values()
            if str(m.get("message_reference", {}).get("message_id")) == str(message_id) and m["author"]["bot"]
        ]

    async def slash(self, subcommand: str, **options: Any) -> str:
        """Send an /omost <subcommand> interaction; returns its token. An option given as an attachment
        (``FakeDiscord.attachment``) is sent as Discord sends one: its id, and the attachment resolved."""
        interaction_id = next(self._ids)
        token = f"token{interaction_id}"
        command = next(c for c in self.commands if c["name"] == "omost")
        types = {str: 3, int: 4, bool: 5, float: 10}
        attachments = {v["id"]: v for v in options.values() if isinstance(v, dict)}

        def option(name: str, value: Any) -> dict[str, Any]:
            if isinstance(value, dict):
                return {"name": name, "type": 11, "value": value["id"]}
            return {"name": name, "type": types[type(value)], "value": value}

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
                            "options": [option(k, v) for k, v in options.items()],
                        }
                    ],
                    **({"resolved": {"attachments": attachments}} if attachments else {}),
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

    def answers_to(self, token: str) -> list[dict[str, Any]]:
        """The interaction's original response and its followups, oldest first."""
        ids = [self.interactions[token]] if token in self.interactions else []
        ids += self.followups.get(token, [])
        return [self.messages[i] for i in ids if i in self.messages]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


@contextlib.asynccontextmanager
async def connected(
    bot: discord.Client, fake: FakeDiscord, *, ready_timeout: float = 10.0
) -> AsyncIterator[None]:
    """Point discord.py at the fake, start ``bot`` and wait until it is ready; close the bot after."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = fake.api  # type: ignore[misc]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway)
    runner = asyncio.create_task(bot.start("loopback-token"))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), ready_timeout)
        yield
    finally:
        await bot.close()
        await asyncio.wait_for(runner, 10)
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved  # type: ignore[misc]
