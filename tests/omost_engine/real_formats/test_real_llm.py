"""Llama-3, Dolphin and Phi-3 with their real tokenizers and configs: prompts, stop tokens, the
canvas grammar against every token of the goldens as each tokenizer splits them, loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from omost_engine.errors import OmostError
from omost_engine.llm.models import LLMLoader
from omost_engine.llm.system_prompt import SYSTEM_PROMPT
from omost_engine.llm.transformers_backend import IncrementalDecoder
from omost_engine.params import LLMParams
from omost_engine.reply import parse_reply

FAMILIES = ("llama-3", "dolphin", "phi-3")
PROMPT = "a dragon fighting warriors"
MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PROMPT}]
# (first ids, last ids, text after the system prompt) of the templated first turn.
EXPECTED_PROMPT = {
    "llama-3": (
        [128000, 128006, 9125, 128007, 271],
        [64, 26161, 11039, 43600, 128009, 128006, 78191, 128007, 271],
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\na dragon fighting warriors<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "dolphin": (
        [128257, 9125, 198],
        [64, 26161, 11039, 43600, 128256, 198, 128257, 78191, 198],
        "<|im_end|>\n<|im_start|>user\na dragon fighting warriors<|im_end|>\n<|im_start|>assistant\n",
    ),
    # Phi-3's role tags strip the newline after them; SentencePiece prepends a space to each text run.
    "phi-3": (
        [1, 32006],
        [32007, 32010, 264, 18984, 8552, 26510, 32007, 32001],
        "<|end|><|user|> a dragon fighting warriors<|end|><|assistant|>",
    ),
}
# The ids that must end a reply: the model's eos and the chat format's end of turn.
EXPECTED_STOPS = {"llama-3": {128009}, "dolphin": {128256}, "phi-3": {32000, 32007}}
VOCAB = {"llama-3": 128256, "dolphin": 128258, "phi-3": 32064}


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_text_ids_and_stop_tokens(real_backend, family) -> None:
    backend = real_backend(family)
    ids = backend.encode(MESSAGES)
    first, last, tail = EXPECTED_PROMPT[family]
    assert ids[: len(first)] == first
    assert ids[-len(last) :] == last
    assert backend.tokenizer.decode(ids).endswith(tail)
    assert EXPECTED_STOPS[family] <= set(backend.eos_token_ids)
    assert backend.llm.model.config.vocab_size == VOCAB[family]


def reply_tokens(backend, reply: str) -> list[int]:
    """The reply as the model produced it after the generation prompt: the tokens of the whole
    conversation with the reply, minus the prompt's, up to the end-of-turn token."""
    prompt = backend.encode(MESSAGES)
    encoded = backend.tokenizer.apply_chat_template([*MESSAGES, {"role": "assistant", "content": reply}])
    full = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    assert full[: len(prompt)] == prompt
    rest = full[len(prompt) :]
    end = next(i for i, t in enumerate(rest) if t in backend.eos_token_ids)
    return rest[: end + 1]


@pytest.mark.parametrize("case", ["01", "02", "04"])
@pytest.mark.parametrize("family", FAMILIES)
def test_grammar_accepts_every_golden_token_as_the_real_tokenizer_splits_it(
    real_backend, golden_reply, family, case
) -> None:
    """Phi-3 starts its reply with the token '▁```': the grammar must take it (and every later one),
    the end-of-turn token must end it, and the streamed text must parse back to the golden layout."""
    backend = real_backend(family)
    reply = golden_reply(case)
    tokens = reply_tokens(backend, reply)
    state = backend._grammar().matcher()
    for position, token in enumerate(tokens):
        assert state.accept(token), (family, position, backend.tokenizer.convert_ids_to_tokens([token]))
    assert state.terminated
    if family == "phi-3":
        assert backend.tokenizer.convert_ids_to_tokens(tokens[:1]) == ["▁```"]
    decoder = IncrementalDecoder(backend.tokenizer)
    streamed = "".join(decoder.push(t) for t in tokens[:-1])
    assert streamed.strip() == reply.strip()
    spaced = " " + reply  # the text with the tokenizer's leading space kept
    assert parse_reply(streamed).to_json() == parse_reply(reply).to_json() == parse_reply(spaced).to_json()


def test_phi3_su_config_loads_and_writes_a_program_in_8bit(real_backend, real_llm_dir) -> None:
    """Configs published before mid-2024 say rope_scaling type "su"; transformers 5 raised KeyError."""
    config = json.loads((real_llm_dir("phi-3", quantization="8bit", rope="su") / "config.json").read_text())
    assert config["rope_scaling"]["type"] == "su"
    backend = real_backend("phi-3 8bit su")
    assert backend.llm.quantization == "8bit"
    assert backend.llm.model.config.rope_parameters["rope_type"] == "longrope"
    result = backend.generate(MESSAGES, LLMParams(max_new_tokens=300, seed=3, prompt_lookup=False))
    assert result.stop_reason == "end"
    assert parse_reply(result.text).conditions


def test_longrope_config_loads(real_llm_dir) -> None:
    llm = LLMLoader().get(str(real_llm_dir("phi-3")))
    assert llm.model.config.rope_parameters["rope_type"] == "longrope"


def test_a_config_the_library_cannot_read_is_one_clear_message(real_llm_dir, tmp_path: Path) -> None:
    """An activation the library does not know raises KeyError deep inside transformers: the user
    gets one OmostError naming the model and the cause, not a traceback."""
    source = real_llm_dir("phi-3")
    broken = tmp_path / "broken-phi-3"
    broken.mkdir()
    for item in source.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["hidden_act"] = "no-such-activation"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        OmostError, match=r"cannot load the LLM .*broken-phi-3: KeyError: .*no-such-activation"
    ) as info:
        LLMLoader().get(str(broken))
    assert "\n" not in str(info.value)


def test_moving_an_8bit_model_moves_its_int8_state(real_llm_dir) -> None:
    """After a forward, Linear8bitLt keeps its int8 weights in state.CB/SCB; a move must take every
    tensor of the model and its quantisation state along (here to the meta device: the CPU has no
    second device, and nn.Module.to cannot even move Int8Params there)."""
    from omost_engine.memory import module_tensors

    llm = LLMLoader().get(str(real_llm_dir("phi-3", quantization="8bit", rope="su")))
    with torch.inference_mode():
        llm.model(torch.tensor([[1, 32010, 264]]))
    names = {name.rsplit(".", 1)[-1] for name, _ in module_tensors(llm.model)}
    assert {"CB", "SCB"} <= names
    llm.move(torch.device("meta"))
    left = [name for name, tensor in module_tensors(llm.model) if tensor.device.type != "meta"]
    assert left == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_offloading_an_8bit_model_frees_the_gpu(real_llm_dir) -> None:
    from omost_engine.memory import ModelManager, module_tensors

    manager = ModelManager(device="cuda", mode="offload")
    loader = LLMLoader(manager=manager, allow_cpu=True)
    llm = loader.get(str(real_llm_dir("phi-3", quantization="8bit", rope="su")))
    manager.register("llm", llm.move, on_device=True)
    with torch.inference_mode():
        llm.model(torch.tensor([[1, 32010, 264]], device="cuda"))
    before = torch.cuda.memory_allocated()
    manager.register_module("other", torch.nn.Linear(2, 2))
    manager.load("other")
    assert all(t.device.type == "cpu" for _, t in module_tensors(llm.model))
    assert torch.cuda.memory_allocated() < before / 4
