"""Discord's faults, injected by the loopback fake, and what the user sees through them.

discord.py's real HTTP client, webhook adapter and gateway run against ``tests/bot/loopback.py``. Each
test asserts the user-visible outcome: the result delivered exactly once (or one clear message), no
traceback in the log, and the next command still served. Hangs are short and the bot's timeouts small.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from loopback import Exchange, FakeDiscord, connected

from bot.bot import OmostBot
from bot.config import BotConfig
from bot.jobs import Finished, JobEvent
from omost_engine.testing.scripted_engine import ScriptedEngine

LAYOUT = json.dumps(
    [{"rect": [0, 90, 0, 90], "prefixes": ["a desert at noon"], "suffixes": [], "color": [230, 200, 120]}]
).encode()


@dataclass
class Wired:
    fake: FakeDiscord
    bot: OmostBot
    engine: ScriptedEngine
    gate: threading.Event  # cleared: renders wait at it
    finished_at: dict[int, float]  # job id -> time.monotonic() of its Finished event


@pytest_asyncio.fixture
async def wired(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Wired]:
    marker = request.node.get_closest_marker("bot_config")
    options: dict[str, Any] = dict(
        db=tmp_path / "bot.sqlite3", download_timeout_s=0.3, max_layout_bytes=4096, status_interval_s=60.0
    )
    options.update(marker.kwargs if marker else {})
    gate = threading.Event()
    gate.set()
    engine = ScriptedEngine(gate=gate, gate_stages={"render"}, gate_timeout=20, image_size=(48, 64))
    bot = OmostBot(config=BotConfig(**options), engine=engine, guild_ready_timeout=0.05)
    finished_at: dict[int, float] = {}
    fake = FakeDiscord()
    await fake.start()
    try:
        async with connected(bot, fake):
            on_event = bot.jobs.on_event

            def timed(event: JobEvent) -> None:
                if isinstance(event, Finished):
                    finished_at[event.job_id] = time.monotonic()
                on_event(event)

            bot.jobs.on_event = timed  # type: ignore[method-assign]
            try:
                yield Wired(fake, bot, engine, gate, finished_at)
            finally:
                gate.set()
                fake.clear_faults()
    finally:
        await fake.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bot_config(**fields): BotConfig fields for the wired bot")


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Log records that carry a traceback (discord.py's "Ignoring exception in ...", log.exception)."""
    caplog.set_level(logging.INFO)

    def found() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]

    return found


# -- helpers ----------------------------------------------------------------------------------------------


def result_writes(fake: FakeDiscord) -> list[Exchange]:
    """Result writes Discord accepted (a status message edited into the result, or a new message)."""
    return [
        e for e in fake.exchanges if e.status == 200 and str(e.body.get("content") or "").startswith("✅")
    ]


def result_message(fake: FakeDiscord, token: str) -> dict[str, Any] | None:
    return next((m for m in fake.answers_to(token) if m["content"].startswith("✅")), None)


async def compose(w: Wired, prompt: str = "a dragon battle") -> str:
    return await w.fake.slash("compose", prompt=prompt, steps=2)


async def delivered(w: Wired, token: str, timeout: float = 10.0) -> dict[str, Any]:
    await w.fake.wait_for(lambda: result_message(w.fake, token) is not None, timeout)
    await w.bot.jobs.drain()
    message = result_message(w.fake, token)
    assert message is not None
    return message


async def held_in_render(w: Wired) -> str:
    """Compose with the render held at the gate; returns when the job waits there and no edit is in flight."""
    w.gate.clear()
    token = await compose(w)
    assert await asyncio.to_thread(w.engine.at_gate.wait, 10), "the render never reached the gate"
    await w.fake.wait_for(lambda: token in w.fake.interactions)
    for _ in range(1000):  # the stage-change edit goes out; then nothing is in flight
        if w.bot.jobs.idle:
            break
        await asyncio.sleep(0.005)
    return token


def report_delay(w: Wired, fault: str) -> float:
    """Seconds from the job's end to its result accepted by Discord (printed with ``pytest -s``)."""
    delay = result_writes(w.fake)[0].at - w.finished_at[1]
    print(f"\n{fault}: the result went out {delay * 1000:.0f} ms after the job finished")
    return delay


async def next_command_is_served(w: Wired) -> None:
    token = await compose(w, "a quiet lake")
    message = await delivered(w, token)
    assert {a["filename"] for a in message["attachments"]} == {"image.png", "layout.json"}


async def count_jobs(w: Wired) -> int:
    row = await w.bot.storage.db.fetchone("SELECT COUNT(*) AS n FROM jobs")
    return int(row["n"])


# -- REST faults on the result ------------------------------------------------------------------------------


async def test_429_on_the_result_is_waited_out_and_delivered_once(
    wired: Wired, tracebacks: Callable[[], list[str]]
) -> None:
    token = await held_in_render(wired)
    fault = wired.fake.inject("PATCH", "webhooks/*/messages/*", status=429, retry_after=0.2)
    wired.gate.set()
    message = await delivered(wired, token)
    assert fault.hits == 1 and len(result_writes(wired.fake)) == 1
    assert {a["filename"] for a in message["attachments"]} == {"image.png", "layout.json"}
    refused = next(e for e in wired.fake.exchanges if e.status == 429)
    assert result_writes(wired.fake)[0].at - refused.at >= 0.2  # the wait Discord asked for was kept
    report_delay(wired, "429 on the result")
    assert tracebacks() == []
    await next_command_is_served(wired)


async def test_5xx_on_the_result_is_retried_and_delivered_once(
    wired: Wired, tracebacks: Callable[[], list[str]]
) -> None:
    token = await held_in_render(wired)
    fault = wired.fake.inject("PATCH", "webhooks/*/messages/*", status=502)
    wired.gate.set()
    await delivered(wired, token)
    assert fault.hits == 1 and len(result_writes(wired.fake)) == 1
    report_delay(wired, "502 on the result")
    assert tracebacks() == []
    await next_command_is_served(wired)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"message": "Unknown Webhook", "code": 10015}),
        (401, {"message": "Invalid Webhook Token", "code": 50027}),
    ],
)
async def test_an_expired_interaction_token_at_delivery_sends_the_result_through_the_channel(
    wired: Wired, tracebacks: Callable[[], list[str]], status: int, body: dict[str, Any]
) -> None:
    token = await held_in_render(wired)
    wired.fake.inject("PATCH", "webhooks/*/messages/*", status=status, body=body, times=None)
    wired.gate.set()
    status_id = wired.fake.interactions[token]
    await wired.fake.wait_for(lambda: wired.fake.messages[status_id]["content"].startswith("✅"))
    await wired.bot.jobs.drain()
    writes = result_writes(wired.fake)
    assert len(writes) == 1 and writes[0].path == f"channels/{wired.fake.channel_id}/messages/{status_id}"
    assert sorted(writes[0].files) == ["image.png", "layout.json"]
    report_delay(wired, f"{status} on the interaction token")
    assert tracebacks() == []
    wired.fake.clear_faults()
    await next_command_is_served(wired)


# -- the gateway --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["close 4000", "TCP cut"])
async def test_a_gateway_drop_mid_job_resumes_and_the_result_is_delivered_once(
    wired: Wired, tracebacks: Callable[[], list[str]], fault: str
) -> None:
    token = await held_in_render(wired)
    if fault == "TCP cut":
        wired.fake.cut_gateway()
    else:
        await wired.fake.close_gateway(4000)
    await wired.fake.wait_for(lambda: "RESUMED" in wired.fake.gateway_log)
    assert wired.fake.gateway_log.count("IDENTIFY") == 1  # resumed, not a new session
    wired.gate.set()
    await delivered(wired, token)
    assert len(result_writes(wired.fake)) == 1
    report_delay(wired, f"gateway {fault}")
    assert tracebacks() == []
    await next_command_is_served(wired)  # the interaction comes over the resumed connection


async def test_a_gateway_rule_closes_the_connection_when_an_event_is_sent(
    wired: Wired, tracebacks: Callable[[], list[str]]
) -> None:
    # The close comes instead of the command: Discord would send the interaction again; here the user does.
    wired.fake.inject("WS", "INTERACTION_CREATE", status=4000)
    await compose(wired)
    await wired.fake.wait_for(lambda: "RESUMED" in wired.fake.gateway_log)
    assert await count_jobs(wired) == 0
    await next_command_is_served(wired)
    assert tracebacks() == []


# -- the CDN: layout files on both paths -------------------------------------------------------------------

CDN_FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "404": ({"status": 404}, "is no longer on Discord"),
    "403": ({"status": 403}, "Discord refused to hand over"),
    "500": ({"status": 500}, "(HTTP 500)"),
    "hang": ({"hang": 5.0}, "within 0.3 s"),
    "dropped connection": ({"drop": True, "times": None}, "was cut off"),  # aiohttp retries a GET once
}


async def assert_one_clear_message_then_served(
    w: Wired, messages: list[dict[str, Any]], expected: str, tracebacks: Callable[[], list[str]]
) -> None:
    warnings = [m for m in messages if m["content"].startswith("⚠️")]
    assert len(warnings) == 1 and expected in warnings[0]["content"], [m["content"] for m in messages]
    assert "Traceback" not in warnings[0]["content"] and "something went wrong" not in warnings[0]["content"]
    assert tracebacks() == []
    w.fake.clear_faults()
    await next_command_is_served(w)


@pytest.mark.parametrize("case", list(CDN_FAULTS))
async def test_cdn_faults_on_the_render_command_are_one_private_message(
    wired: Wired, tracebacks: Callable[[], list[str]], case: str
) -> None:
    rule, expected = CDN_FAULTS[case]
    wired.fake.inject("GET", "cdn/attachments/*", **rule)
    token = await wired.fake.slash("render", layout=wired.fake.attachment("desert.json", LAYOUT))
    await wired.fake.wait_for(lambda: any(m["content"].startswith("⚠️") for m in wired.fake.answers_to(token)))
    answers = wired.fake.answers_to(token)
    # Acknowledged (privately) before the download started: Discord's 3 seconds are never at risk.
    callback = next(i for i, (m, p) in enumerate(wired.fake.requests) if p.endswith("/callback"))
    download = next(i for i, (m, p) in enumerate(wired.fake.requests) if p.startswith("cdn/"))
    assert callback < download and answers[0]["flags"] & 64
    assert all(m["flags"] & 64 for m in answers)  # nothing public
    assert await count_jobs(wired) == 0
    await assert_one_clear_message_then_served(wired, answers, expected, tracebacks)


@pytest.mark.parametrize("case", list(CDN_FAULTS))
async def test_cdn_faults_on_a_reply_are_one_reply(
    wired: Wired, tracebacks: Callable[[], list[str]], case: str
) -> None:
    first = await delivered(wired, await compose(wired))
    rule, expected = CDN_FAULTS[case]
    wired.fake.inject("GET", "cdn/attachments/*", **rule)
    reply = await wired.fake.user_message(
        "", reply_to=int(first["id"]), attachments=[wired.fake.attachment("layout.json", LAYOUT)]
    )
    await wired.fake.wait_for(lambda: bool(wired.fake.replies_to(reply)))
    assert await count_jobs(wired) == 1
    await assert_one_clear_message_then_served(wired, wired.fake.replies_to(reply), expected, tracebacks)


@pytest.mark.parametrize(
    ("served", "claimed", "expected"),
    [
        (
            b" " * 5000,
            100,
            "the layout file is 5000 bytes; at most 4096 bytes are allowed",
        ),  # more than it said
        (b"<html>Service Unavailable</html>", None, "not valid JSON"),  # an error page instead of the file
    ],
)
async def test_wrong_bytes_from_the_cdn_are_one_clear_message_on_both_paths(
    wired: Wired, tracebacks: Callable[[], list[str]], served: bytes, claimed: int | None, expected: str
) -> None:
    token = await wired.fake.slash("render", layout=wired.fake.attachment("x.json", served, size=claimed))
    await wired.fake.wait_for(lambda: any(m["content"].startswith("⚠️") for m in wired.fake.answers_to(token)))
    warnings = [m for m in wired.fake.answers_to(token) if m["content"].startswith("⚠️")]
    assert len(warnings) == 1 and expected in warnings[0]["content"]
    first = await delivered(wired, await compose(wired))
    reply = await wired.fake.user_message(
        "", reply_to=int(first["id"]), attachments=[wired.fake.attachment("x.json", served, size=claimed)]
    )
    await wired.fake.wait_for(lambda: bool(wired.fake.replies_to(reply)))
    await assert_one_clear_message_then_served(wired, wired.fake.replies_to(reply), expected, tracebacks)


async def test_a_good_layout_file_still_renders_on_both_paths(wired: Wired) -> None:
    token = await wired.fake.slash("render", layout=wired.fake.attachment("desert.json", LAYOUT))
    status = await delivered(wired, token)
    assert status["flags"] & 64 == 0 and "Done" in status["content"]
    assert [m["content"] for m in wired.fake.answers_to(token)][0] == "📥 Job #1 is queued."
    reply = await wired.fake.user_message(
        "", reply_to=int(status["id"]), attachments=[wired.fake.attachment("layout.json", LAYOUT)]
    )
    await wired.fake.wait_for(
        lambda: any(m["content"].startswith("✅") for m in wired.fake.replies_to(reply))
    )
    assert [c[0] for c in wired.engine.calls] == ["render", "render"]


# -- progress edits during an outage ---------------------------------------------------------------------


@pytest.mark.bot_config(status_interval_s=0.0)
async def test_a_status_edit_outage_does_not_hold_back_the_result(
    wired: Wired, tracebacks: Callable[[], list[str]]
) -> None:
    # Status-message edits answer 503 while the job runs: discord.py retries a 5xx edit after 1, 3, 5, 7
    # and 9 s. The job ends while a progress edit sleeps in those retries; the result must not wait for it.
    outage = wired.fake.inject("PATCH", "webhooks/*/messages/*", status=503, times=None)
    wired.gate.clear()
    token = await compose(wired)
    await wired.fake.wait_for(lambda: outage.hits >= 2)  # a progress edit is inside discord.py's retries
    assert await asyncio.to_thread(wired.engine.at_gate.wait, 10)
    wired.fake.clear_faults()  # the outage ends as the job finishes
    outage_over = time.monotonic()
    wired.gate.set()
    message = await delivered(wired, token)
    status_id = int(message["id"])
    writes = result_writes(wired.fake)
    assert len(writes) == 1
    # The first edit Discord accepted after the outage is the result: the pending progress edit was
    # cancelled, not waited for, and no progress edit came after the result.
    accepted = [
        e
        for e in wired.fake.exchanges
        if e.status == 200 and e.at >= outage_over and e.path.endswith(f"/messages/{status_id}")
    ]
    assert accepted == writes
    report_delay(wired, "status-edit outage")
    assert message["content"].startswith("✅")
    assert tracebacks() == []
    await next_command_is_served(wired)
