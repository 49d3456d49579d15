import re
import socket
from pathlib import Path

import pytest

from omost_engine.errors import OmostError
from omost_engine.llm.conversation import build_messages
from omost_engine.llm.openai_backend import OpenAIBackend, chat_completions_url
from omost_engine.llm.scripted import split_tokens
from omost_engine.params import LLMParams
from omost_engine.progress import CancelToken

PARAMS = LLMParams(seed=42, temperature=0.3, top_p=0.8, max_new_tokens=512)


@pytest.fixture
def server(openai_server):
    return openai_server


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("https://h/api/v1/", "https://h/api/v1/chat/completions"),
        ("http://h:11434/v1/chat/completions", "http://h:11434/v1/chat/completions"),
    ],
)
def test_base_urls(base: str, url: str) -> None:
    assert chat_completions_url(base) == url


@pytest.mark.parametrize("base", ["localhost:8000", "ftp://h/v1", "http://", ""])
def test_bad_endpoint_urls(base: str) -> None:
    with pytest.raises(OmostError, match="http"):
        chat_completions_url(base)


def test_streams_the_reply_and_passes_the_parameters(server) -> None:
    backend = OpenAIBackend(server.base + "/v1", model="omost", api_key="sk-test")
    pieces: list[str] = []
    generation = backend.generate(
        build_messages([], "a dragon"), PARAMS, on_text=lambda p, n: pieces.append(p)
    )
    assert generation.text == server.reply == "".join(pieces)
    assert generation.stop_reason == "end"
    assert generation.tokens == len(split_tokens(server.reply))
    body = server.requests[0]
    assert body["model"] == "omost" and body["stream"] is True
    assert (body["seed"], body["temperature"], body["top_p"], body["max_tokens"]) == (42, 0.3, 0.8, 512)
    assert body["messages"] == build_messages([], "a dragon")
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_model_defaults_to_the_servers_first(server) -> None:
    backend = OpenAIBackend(server.base)
    backend.generate(build_messages([], "a"), PARAMS)
    assert server.requests[0]["model"] == "omost-llama-3-8b-q8"
    assert "omost-llama-3-8b-q8" in backend.name


def test_length_finish_and_non_streaming_servers(server) -> None:
    backend = OpenAIBackend(server.base, model="m")
    server.mode = "length"
    assert backend.generate(build_messages([], "a"), PARAMS).stop_reason == "length"
    server.mode = "json"
    generation = backend.generate(build_messages([], "a"), PARAMS)
    assert generation.text == server.reply and generation.stop_reason == "end"


@pytest.mark.parametrize(
    ("mode", "pattern"),
    [
        ("404", r"HTTP 404: model 'x' not found"),
        ("500", r"HTTP 500: Internal Server Error: CUDA out of memory"),
        ("error-event", r"reported an error: generation failed"),
    ],
)
def test_http_failures_are_clear_errors(server, mode: str, pattern: str) -> None:
    server.mode = mode
    with pytest.raises(OmostError, match=pattern) as info:
        OpenAIBackend(server.base, model="m", retries=0).generate(build_messages([], "a"), PARAMS)
    assert info.value.parameter == "llm_endpoint"
    assert len(server.requests) == 1  # client errors are not retried


def test_a_server_that_is_still_loading_is_retried(server) -> None:
    server.failures_left = 2
    backend = OpenAIBackend(server.base, model="m", retries=2, retry_delay=0.01)
    assert backend.generate(build_messages([], "a"), PARAMS).text == server.reply
    assert len(server.requests) == 3


class RecordedWaits:
    """An injected sleep: records each backoff wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def test_a_rate_limit_is_retried_after_the_servers_retry_after(server) -> None:
    server.failures_left, server.failure_status, server.retry_after = 1, 429, "7"
    waits = RecordedWaits()
    backend = OpenAIBackend(server.base, model="m", retries=2, retry_delay=0.5, sleep=waits)
    assert backend.generate(build_messages([], "a"), PARAMS).text == server.reply
    assert len(server.requests) == 2
    assert waits.waits == [7.0]  # the server's Retry-After, not the 0.5 s backoff


def test_a_server_error_is_retried_with_jittered_exponential_backoff(server) -> None:
    server.failures_left, server.failure_status = 2, 500
    waits = RecordedWaits()
    factors = iter([0.5, 1.25, 1.0])
    backend = OpenAIBackend(
        server.base, model="m", retries=3, retry_delay=0.2, sleep=waits, jitter=lambda: next(factors)
    )
    assert backend.generate(build_messages([], "a"), PARAMS).text == server.reply
    assert len(server.requests) == 3
    assert waits.waits == pytest.approx([0.2 * 1 * 0.5, 0.2 * 2 * 1.25])


def test_the_default_jitter_varies_the_wait_within_half_to_one_and_a_half_times(server) -> None:
    backend = OpenAIBackend(server.base, model="m", retry_delay=1.0)
    delays = {backend._backoff(2) for _ in range(50)}
    assert len(delays) > 1 and all(2.0 <= d < 6.0 for d in delays)
    assert OpenAIBackend(server.base, model="m", retry_delay=10.0, max_retry_delay=3.0)._backoff(5) == 3.0


@pytest.mark.parametrize(("status", "retry_after"), [(429, "0.01"), (500, None), (503, None)])
def test_retries_are_bounded_then_one_clear_error(server, status: int, retry_after: str | None) -> None:
    server.failures_left, server.failure_status, server.retry_after = 10, status, retry_after
    waits = RecordedWaits()
    backend = OpenAIBackend(server.base, model="m", retries=2, retry_delay=0.01, sleep=waits)
    with pytest.raises(OmostError, match=rf"answered HTTP {status} after 3 tries: \w") as info:
        backend.generate(build_messages([], "a"), PARAMS)
    assert "\n" not in str(info.value) and info.value.parameter == "llm_endpoint"
    assert len(server.requests) == 3 and len(waits.waits) == 2


def test_a_retry_after_longer_than_the_longest_wait_is_reported_at_once(server) -> None:
    server.failures_left, server.failure_status, server.retry_after = 1, 429, "3600"
    waits = RecordedWaits()
    backend = OpenAIBackend(server.base, model="m", retries=2, max_retry_delay=30, sleep=waits)
    with pytest.raises(OmostError, match=r"HTTP 429 and asks to retry after 3600 s \(longer than the 30 s"):
        backend.generate(build_messages([], "a"), PARAMS)
    assert len(server.requests) == 1 and waits.waits == []


def test_the_real_sleep_is_used_by_default(server) -> None:
    server.failures_left, server.failure_status, server.retry_after = 1, 429, "0.05"
    backend = OpenAIBackend(server.base, model="m", retries=1)
    assert backend.generate(build_messages([], "a"), PARAMS).text == server.reply
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["stall", "stall-before-headers"])
def test_a_stalled_server_times_out(server, mode: str) -> None:
    server.mode = mode
    backend = OpenAIBackend(server.base, model="m", read_timeout=0.3, retries=2)
    with pytest.raises(OmostError, match=r"stopped sending for 0.3 s"):
        backend.generate(build_messages([], "a"), PARAMS)
    assert len(server.requests) == 1


def test_cancel_interrupts_a_stalled_read(server) -> None:
    server.mode = "stall"
    cancel = CancelToken()
    backend = OpenAIBackend(server.base, model="m", read_timeout=60)
    generation = backend.generate(
        build_messages([], "a"), PARAMS, cancel=cancel, on_text=lambda p, n: n == 5 and cancel.cancel()
    )
    assert generation.stop_reason == "cancelled"
    assert generation.tokens == 5


def test_an_unreachable_endpoint_is_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", model="m", retries=2, retry_delay=0.01)
    with pytest.raises(OmostError, match=r"cannot reach the LLM endpoint .* after 3 tries"):
        backend.generate(build_messages([], "a"), PARAMS)


async def test_async_stream_from_the_event_loop(server) -> None:
    backend = OpenAIBackend(server.base, model="m")
    pieces = [p async for p in backend.astream(build_messages([], "a"), PARAMS)]
    assert "".join(pieces) == server.reply


async def test_blocking_generate_refuses_to_run_on_the_event_loop(server) -> None:
    with pytest.raises(RuntimeError, match="worker thread"):
        OpenAIBackend(server.base, model="m").generate(build_messages([], "a"), PARAMS)


# --- the canvas grammar on remote endpoints -------------------------------------------------------

GRAMMAR_FIELDS = {"grammar", "structured_outputs", "guided_grammar"}
GOLDEN_01_PROGRAM = next((Path(__file__).resolve().parents[2] / "fixtures" / "goldens").glob("01_*.py"))


def sent_grammar(body: dict, grammar: str) -> set[str]:
    """The grammar fields of a request body, after checking that each carries the whole grammar."""
    fields = GRAMMAR_FIELDS & body.keys()
    for name in fields:
        value = body[name]["grammar"] if name == "structured_outputs" else body[name]
        assert value == grammar
    return fields


@pytest.fixture(scope="module")
def grammar_text() -> str:
    return OpenAIBackend("http://h:1").grammar_text()


def test_the_remote_grammar_compiles_and_accepts_golden_01(grammar_text: str, golden_reply) -> None:
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    grammar = xgrammar.Grammar.from_ebnf(grammar_text)
    reply = f"```python\n{GOLDEN_01_PROGRAM.read_text().rstrip()}\n```"  # the fence the models write
    assert reply == golden_reply("01")
    assert _is_grammar_accept_string(grammar, reply)
    assert not _is_grammar_accept_string(grammar, reply.replace("'on the left'", "'on the leftish'"))
    zero_distance = re.sub(r"distance_to_viewer=[\d.]+", "distance_to_viewer=0", reply, count=1)
    assert zero_distance != reply and not _is_grammar_accept_string(grammar, zero_distance)
    assert "{0,1000}" in grammar_text  # string lengths are bounded inside the grammar: no guard on a server


@pytest.mark.parametrize(
    ("grammar_field", "fields"),
    [
        ("llama.cpp", {"grammar"}),
        ("vllm", {"structured_outputs"}),
        ("vllm-guided", {"guided_grammar"}),
        ("none", set()),
    ],
)
def test_the_grammar_goes_in_the_named_field(
    server, grammar_text: str, grammar_field, fields: set[str]
) -> None:
    backend = OpenAIBackend(server.base, model="m", grammar_field=grammar_field)
    generation = backend.generate(build_messages([], "a"), PARAMS)
    assert generation.text == server.reply and generation.notes == ()
    assert sent_grammar(server.requests[0], grammar_text) == fields


@pytest.mark.parametrize(
    ("owned_by", "version", "fields"),
    [
        ("llamacpp", None, {"grammar"}),
        ("vllm", "0.13.1", {"structured_outputs"}),
        ("vllm", "0.11.2", {"guided_grammar"}),
        ("vllm", None, {"structured_outputs"}),
        (
            "library",
            None,
            {"grammar", "structured_outputs"},
        ),  # Ollama: both, it ignores what it does not know
        (None, None, {"grammar", "structured_outputs"}),
    ],
)
def test_auto_asks_the_server_what_it_is(
    server, grammar_text: str, owned_by, version, fields: set[str]
) -> None:
    server.owned_by, server.version = owned_by, version
    backend = OpenAIBackend(server.base, model="m")
    backend.generate(build_messages([], "a"), PARAMS)
    backend.generate(build_messages([], "b"), PARAMS)
    assert [sent_grammar(body, grammar_text) for body in server.requests] == [fields, fields]


@pytest.mark.parametrize("grammar_field", ["auto", "llama.cpp", "vllm"])
def test_no_grammar_field_when_the_grammar_is_off(server, grammar_field) -> None:
    server.owned_by = "vllm"
    OpenAIBackend(server.base, model="m", grammar_field=grammar_field).generate(
        build_messages([], "a"), PARAMS.replace(grammar=False)
    )
    assert not GRAMMAR_FIELDS & server.requests[0].keys()


def test_a_refused_grammar_is_dropped_once_and_remembered(server, grammar_text: str, caplog) -> None:
    from omost_engine.llm.service import ChatService

    server.refuse_fields = ("grammar",)  # as OpenAI's own API answers an unknown field
    backend = OpenAIBackend(server.base, model="m")
    with caplog.at_level("WARNING", logger="omost_engine.llm.openai_backend"):
        generation = backend.generate(build_messages([], "a"), PARAMS)
    assert generation.text == server.reply
    assert [sent_grammar(body, grammar_text) for body in server.requests] == [
        {"grammar", "structured_outputs"},
        set(),
    ]
    (note,) = generation.notes
    assert "refused the canvas grammar (HTTP 400: Unrecognized request argument supplied: grammar)" in note
    assert "not constrained" in note and "refused the canvas grammar" in caplog.text
    server.requests.clear()
    result = ChatService(backend=backend).chat([], "a dragon", PARAMS)  # remembered: one request, no grammar
    assert len(server.requests) == 1 and not GRAMMAR_FIELDS & server.requests[0].keys()
    assert any("refused the canvas grammar earlier" in n and "not constrained" in n for n in result.notes)
    server.requests.clear()
    assert backend.generate(build_messages([], "a"), PARAMS.replace(grammar=False)).notes == ()


def test_a_client_error_about_something_else_is_not_a_grammar_refusal(server) -> None:
    server.refuse_fields = ("messages",)
    backend = OpenAIBackend(server.base, model="m", grammar_field="llama.cpp")
    with pytest.raises(OmostError, match=r"HTTP 400: Unrecognized request argument supplied: messages"):
        backend.generate(build_messages([], "a"), PARAMS)
    assert len(server.requests) == 1 and backend.grammar_refusal is None


def test_an_unknown_grammar_field_kind_is_refused() -> None:
    with pytest.raises(OmostError, match="grammar field") as info:
        OpenAIBackend("http://h:1", grammar_field="sglang")  # type: ignore[arg-type]
    assert info.value.parameter == "grammar_field" and "llama.cpp" in str(info.value.allowed)


@pytest.mark.parametrize(("flags", "fields"), [((), {"grammar"}), (("--no-grammar",), set())])
def test_compose_no_grammar_turns_the_remote_grammar_off(
    server, grammar_text: str, tmp_path: Path, capsys, flags: tuple[str, ...], fields: set[str]
) -> None:
    from bot.cli import main

    server.owned_by = "llamacpp"
    status = main(
        [
            "compose",
            "a dragon",
            "--llm-endpoint",
            server.base,
            "--no-render",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
            *flags,
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert sent_grammar(server.requests[-1], grammar_text) == fields
