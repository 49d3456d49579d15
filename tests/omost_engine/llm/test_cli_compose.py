import json
import socket
from pathlib import Path

import pytest

from bot.cli import main
from omost_engine.layout import Layout
from omost_engine.reply import parse_reply
from omost_engine.testing.comfyui_loader import check_project_file


def run(capsys, *argv: str) -> tuple[int, str]:
    status = main(["compose", *argv])
    return status, capsys.readouterr().err


def test_compose_against_an_endpoint_writes_reply_layout_and_conversation(
    openai_server, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "dragon"
    status, err = run(
        capsys,
        "a dragon fighting warriors",
        "--llm-endpoint",
        openai_server.base + "/v1",
        "--no-render",
        "--out",
        str(out),
        "--seed",
        "7",
        "--temperature",
        "0.2",
    )
    assert status == 0, err
    assert (out / "reply.md").read_text() == openai_server.reply
    layout = Layout.loads((out / "layout.json").read_bytes())
    assert layout.conditions == parse_reply(openai_server.reply).conditions
    conversation = json.loads((out / "conversation.json").read_text())
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["model"] == openai_server.base + "/v1"
    request = openai_server.requests[0]
    assert (request["seed"], request["temperature"]) == (7, 0.2)
    assert "tokens/s" in err and "regions" in err


def test_continue_sends_the_previous_turn_and_reuses_the_endpoint(
    openai_server, golden_reply, tmp_path: Path, capsys
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        run(
            capsys,
            "a dragon fighting warriors",
            "--llm-endpoint",
            openai_server.base,
            "--no-render",
            "--out",
            str(first),
        )[0]
        == 0
    )
    openai_server.reply = golden_reply("02")
    status, err = run(
        capsys,
        "change the dragon to a dinosaur",
        "--continue",
        str(first),
        "--no-render",
        "--out",
        str(second),
        "--quiet",
    )
    assert status == 0, err
    assert err == ""  # --quiet
    sent = openai_server.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == golden_reply("01")
    messages = json.loads((second / "conversation.json").read_text())["messages"]
    assert [m["content"] for m in messages][-1] == golden_reply("02")
    assert len(messages) == 4
    layout = Layout.loads((second / "layout.json").read_bytes())
    assert "dinosaur" in layout.conditions[0].prefixes[0].lower()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--temperature", "5"], "temperature"),
        (["--max-new-tokens", "10"], "max_new_tokens"),
        (["--continue", "/no/such/folder"], "no conversation to continue"),
        (["--llm-endpoint", "localhost:1234"], "http(s) URL"),
        (["--llm", "./missing-model"], "unknown LLM"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    status, err = run(capsys, "a cat", "--no-render", "--out", str(tmp_path / "o"), *argv)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("omost-bot compose: ") and needle in err


def test_unreachable_endpoint_is_one_line(tmp_path: Path, capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, err = run(
        capsys,
        "a cat",
        "--llm-endpoint",
        f"http://127.0.0.1:{port}",
        "--no-render",
        "--quiet",
        "--out",
        str(tmp_path / "o"),
    )
    assert status == 2 and "cannot reach the LLM endpoint" in err and err.count("\n") == 1


def test_a_local_model_reply_without_a_program_keeps_the_reply(
    tiny_llm_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "o"
    # Without the grammar (on by default, it makes every local reply a program) the random model
    # writes random text.
    status, err = run(
        capsys,
        "a cat",
        "--llm",
        str(tiny_llm_dir),
        "--no-render",
        "--quiet",
        "--out",
        str(out),
        "--max-new-tokens",
        "128",
        "--no-grammar",
    )
    assert status == 2 and "not a valid canvas program" in err
    assert (out / "reply.md").exists()  # the random model's text, kept for the user
    assert not (out / "layout.json").exists()


def test_compose_then_render_with_the_renderers_options(
    openai_server, tiny_sdxl_folder: Path, tmp_path: Path, capsys
) -> None:
    from PIL import Image

    out = tmp_path / "rendered"
    status, err = run(
        capsys,
        "a dragon fighting warriors",
        "--llm-endpoint",
        openai_server.base,
        "--out",
        str(out),
        "--model",
        str(tiny_sdxl_folder),
        "--size",
        "256x256",
        "--steps",
        "2",
        "--seed",
        "9",
        "--device",
        "cpu",
        "--quiet",
    )
    assert status == 0, err
    assert Image.open(out / "image.png").size == (256, 256)
    layout = Layout.loads((out / "layout.json").read_bytes())
    assert layout.meta["render"]["seed"] == 9  # one seed for the LLM and the render
    assert layout.meta["program"] and layout.meta["prompt"] == "a dragon fighting warriors"
    check_project_file((out / "layout.json").read_text())
    assert layout.meta["llm_params"]["seed"] == 9 == openai_server.requests[-1]["seed"]


class _RecordingBackend:
    """A ``ScriptedBackend`` that also keeps the ``LLMParams`` of every call."""

    @staticmethod
    def service(reply: str, seen: list):
        from omost_engine.llm.scripted import ScriptedBackend
        from omost_engine.llm.service import ChatService

        class Recording(ScriptedBackend):
            def generate(self, messages, params, **kwargs):
                seen.append(params)
                return super().generate(messages, params, **kwargs)

        return ChatService(backend=Recording([reply], name="recording"))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], (True, 20, True)),  # prompt lookup and the grammar are on by default
        (["--no-prompt-lookup"], (False, 20, True)),
        (["--draft-tokens", "7"], (True, 7, True)),
        (["--no-grammar"], (True, 20, False)),
        (["--no-prompt-lookup", "--no-grammar", "--draft-tokens", "50"], (False, 50, False)),
    ],
)
def test_decoding_switches_reach_the_llm(
    monkeypatch, golden_reply, tmp_path: Path, capsys, flags: list[str], expected: tuple[bool, int, bool]
) -> None:
    import omost_engine.cli.compose as compose_cli

    seen: list = []
    monkeypatch.setattr(
        compose_cli,
        "_service",
        lambda args, llm, endpoint: _RecordingBackend.service(golden_reply("01"), seen),
    )
    status, err = run(capsys, "a dragon", "--no-render", "--quiet", "--out", str(tmp_path / "o"), *flags)
    assert status == 0, err
    (params,) = seen
    assert (params.prompt_lookup, params.prompt_lookup_tokens, params.grammar) == expected


def test_draft_tokens_out_of_range_is_exit_2(tmp_path: Path, capsys) -> None:
    status, err = run(capsys, "a cat", "--no-render", "--out", str(tmp_path / "o"), "--draft-tokens", "0")
    assert status == 2 and "prompt_lookup_tokens" in err and err.count("\n") == 1
