"""Failures on the job path leave a trace in the log and one short sentence in Discord (issue 10, items 6, 7)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from simenv import World

import bot.formatting
from bot.storage import Storage

CUDA_DUMP = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; 21.10 GiB already "
    "allocated) at /home/omost/.cache/huggingface/hub/models--stabilityai/snapshots/abc/unet.safetensors"
)


def error_records(caplog: pytest.LogCaptureFixture, job_id: int) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and f"job {job_id}" in r.getMessage() and r.exc_info
    ]


async def test_an_engine_crash_is_logged_and_the_user_reads_one_sentence_with_the_job_id(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.engine.fail_next("render", RuntimeError(CUDA_DUMP))
    with caplog.at_level(logging.WARNING):
        failed = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    text = failed.response.content
    assert text.startswith("❌ Job #1 failed:") and "logged under job #1" in text
    assert "CUDA" not in text and "/home" not in text and "RuntimeError" not in text and "\n" not in text
    (record,) = error_records(caplog, 1)
    assert CUDA_DUMP in str(record.exc_info[1])
    assert (await world.bot.storage.job(1)).state == "failed"


async def test_a_delivery_that_raises_fails_the_job_and_tells_the_user(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: Any) -> None:
        raise ValueError("embed builder broke at /srv/omost/bot/formatting.py")

    monkeypatch.setattr(bot.formatting, "result_embed", broken)
    with caplog.at_level(logging.WARNING):
        result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    status = result.response
    # Not "running" with a frozen status: failed, said so, with the job id and without the exception's text.
    assert (await world.bot.storage.job(1)).state == "failed"
    assert status.content.startswith("❌ Job #1 failed: the result could not be delivered")
    assert "logged under job #1" in status.content and "/srv" not in status.content
    assert status.components == [] and status.attachments == []
    assert world.bot.jobs.trackers == {}
    (record,) = error_records(caplog, 1)
    assert "embed builder broke" in str(record.exc_info[1])
    # The worker goes on.
    monkeypatch.undo()
    ok = await world.alice.slash(world.channel, "omost compose", prompt="again")
    assert "Done" in ok.response.content


async def test_a_result_on_screen_is_kept_when_recording_it_fails(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Storage.update_job
    failures = iter([OSError("database is locked")])

    async def flaky(self: Storage, job_id: int, **changes: Any) -> None:
        if changes.get("state") == "done":
            error = next(failures, None)
            if error is not None:
                raise error
        await real(self, job_id, **changes)

    monkeypatch.setattr(Storage, "update_job", flaky)
    with caplog.at_level(logging.WARNING):
        result = await world.alice.slash(world.channel, "omost compose", prompt="a dragon battle")
    message = result.response
    assert "Done" in message.content and len(message.attachments) == 2  # never relabelled "failed"
    job = await world.bot.storage.job(1)
    assert job.state == "done" and job.result_message_id == message.id  # recorded on the second try
    assert error_records(caplog, 1)
