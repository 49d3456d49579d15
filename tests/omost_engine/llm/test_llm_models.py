from pathlib import Path

import pytest
import torch

from omost_engine.errors import OmostError
from omost_engine.llm.models import (
    DEFAULT_LLM,
    KNOWN_MODELS,
    LLMLoader,
    is_unfiltered,
    known_model,
    resolve_model,
)
from omost_engine.memory import ModelManager


def test_registry_lists_the_published_models() -> None:
    repos = {m.repo for m in KNOWN_MODELS}
    assert DEFAULT_LLM == "lllyasviel/omost-llama-3-8b-4bits"
    assert {
        "lllyasviel/omost-llama-3-8b-4bits",
        "lllyasviel/omost-dolphin-2.9-llama3-8b-4bits",
        "lllyasviel/omost-phi-3-mini-128k-8bits",
        "lllyasviel/omost-llama-3-8b",
        "lllyasviel/omost-dolphin-2.9-llama3-8b",
        "lllyasviel/omost-phi-3-mini-128k",
    } <= repos
    assert is_unfiltered("lllyasviel/omost-dolphin-2.9-llama3-8b-4bits")
    assert is_unfiltered("omost-dolphin-2.9-llama3-8b")
    assert not is_unfiltered(DEFAULT_LLM)
    assert known_model("omost-phi-3-mini-128k-8bits").quantization == "8bit"


def test_resolve_accepts_names_hub_ids_and_folders(tiny_llm_dir: Path) -> None:
    assert resolve_model(None).name == DEFAULT_LLM
    assert resolve_model("omost-llama-3-8b-4bits").known is not None
    assert resolve_model("someone/omost-finetune") == resolve_model("someone/omost-finetune")
    assert not resolve_model("someone/omost-finetune").local
    folder = resolve_model(str(tiny_llm_dir))
    assert folder.local and folder.location == str(tiny_llm_dir.resolve())


@pytest.mark.parametrize("name", ["./no/such/folder", "not a model", "a/b/c"])
def test_resolve_rejects_what_cannot_be_a_model(name: str) -> None:
    with pytest.raises(OmostError, match="unknown LLM"):
        resolve_model(name)


def test_folder_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OmostError, match="no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_8b_model_without_gpu_is_refused_before_downloading() -> None:
    with pytest.raises(OmostError, match="no GPU") as info:
        LLMLoader().get("lllyasviel/omost-llama-3-8b-4bits")
    assert info.value.parameter == "llm"
    assert "allow_cpu" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_large_local_model_is_refused_from_its_config(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=4096, num_hidden_layers=32, vocab_size=128256).save_pretrained(tmp_path)
    with pytest.raises(OmostError, match=r"about [0-9.]+B parameters"):
        LLMLoader().get(str(tmp_path))


def test_plain_model_loads_once_and_is_reused(tiny_llm_dir: Path) -> None:
    loader = LLMLoader()
    first = loader.get(str(tiny_llm_dir))
    assert type(first.model).__name__ == "LlamaForCausalLM"
    assert first.quantization == "none"
    assert first.model.dtype == torch.float32  # fp32 compute on the CPU
    assert loader.get(str(tiny_llm_dir)) is first
    assert loader.loaded() == [str(tiny_llm_dir.resolve())]


@pytest.mark.parametrize(
    ("family", "quantization", "layer"),
    [
        ("llama-3", "4bit", "Linear4bit"),  # as omost-llama-3-8b-4bits / dolphin 4bits
        ("llama-3", "8bit", "Linear8bitLt"),
        ("phi-3", "8bit", "Linear8bitLt"),  # as omost-phi-3-mini-128k-8bits
    ],
)
def test_prequantized_checkpoints_load_with_their_own_config(
    tmp_path: Path, family: str, quantization: str, layer: str
) -> None:
    from omost_engine.llm.conversation import build_messages
    from omost_engine.llm.transformers_backend import TransformersBackend
    from omost_engine.params import LLMParams
    from omost_engine.testing.tiny_llm import save_tiny_llm

    folder = save_tiny_llm(tmp_path / f"tiny-{family}-{quantization}", family, quantization=quantization)
    llm = LLMLoader().get(str(folder))
    assert llm.quantization == quantization
    assert any(type(m).__name__ == layer for m in llm.model.modules())
    llm.move(torch.device("cpu"))  # bitsandbytes models move with memory.move_module
    generation = TransformersBackend(llm).generate(build_messages([], "a cat"), LLMParams(max_new_tokens=128))
    assert generation.tokens > 0
    # After a forward the quantisation state is populated; a move takes every tensor of the model and
    # of its quant state along (to "meta" here: the CPU has no second device; nn.Module.to raised there).
    from omost_engine.memory import module_tensors

    quant = {name.rsplit(".", 1)[-1] for name, _ in module_tensors(llm.model)}
    assert ({"CB", "SCB"} if quantization == "8bit" else {"absmax", "code"}) <= quant
    llm.move(torch.device("meta"))
    assert [name for name, tensor in module_tensors(llm.model) if tensor.device.type != "meta"] == []


def test_the_dtype_can_be_forced(tiny_llm_dir: Path) -> None:
    assert LLMLoader().get(str(tiny_llm_dir)).model.dtype == torch.float32  # small model on the CPU: fp32
    assert LLMLoader(dtype="bf16").get(str(tiny_llm_dir)).model.dtype == torch.bfloat16
    with pytest.raises(OmostError, match="unknown dtype 'fp8'"):
        LLMLoader(dtype="fp8")
    from bot.cli import build_parser
    from omost_engine.cli.compose import _service

    args = build_parser().parse_args(["compose", "a cat", "--out", "unused", "--llm-dtype", "bf16"])
    assert _service(args, None, endpoint=False).loader.dtype == torch.bfloat16


def test_keep_loaded_evicts_the_oldest(tiny_llm_dir: Path, tiny_phi3_dir: Path) -> None:
    loader = LLMLoader(keep_loaded=1)
    loader.get(str(tiny_llm_dir))
    phi = loader.get(str(tiny_phi3_dir))
    assert type(phi.model).__name__ == "Phi3ForCausalLM"
    assert loader.loaded() == [str(tiny_phi3_dir.resolve())]


class RecordingManager(ModelManager):
    """A real ModelManager that also records which stages were loaded."""

    def __init__(self) -> None:
        super().__init__(device="cpu")
        self.loads: list[tuple[str, ...]] = []

    def load(self, *names: str) -> None:
        self.loads.append(names)
        super().load(*names)


def test_backend_registers_as_llm_and_loads_it_before_generating(tiny_llm_dir: Path) -> None:
    from omost_engine.llm.conversation import build_messages
    from omost_engine.llm.transformers_backend import TransformersBackend
    from omost_engine.params import LLMParams

    manager = RecordingManager()
    backend = TransformersBackend(LLMLoader(manager=manager).get(str(tiny_llm_dir)), manager=manager)
    assert "llm" in manager._entries
    backend.generate(build_messages([], "a cat"), LLMParams(max_new_tokens=128, temperature=0))
    assert manager.loads == [("llm",)]
    assert backend._state is not None
    manager._entries["llm"].move(torch.device("cpu"))  # what the manager does when the renderer needs room
    assert backend._state is None  # the cached prompt state never outlives a move


def test_a_hub_id_that_cannot_be_fetched_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing cached under cache_dir, no network
    with pytest.raises(OmostError, match="cannot load the LLM someone/omost-finetune") as info:
        LLMLoader(allow_cpu=True, cache_dir=str(tmp_path)).get("someone/omost-finetune")
    assert info.value.parameter == "llm"
    assert "not in the local Hugging Face cache" in str(info.value)
    assert "`hf download someone/omost-finetune`" in str(info.value)


def test_a_folder_without_weights_is_a_clear_error(tmp_path: Path, tiny_llm_dir: Path) -> None:
    import shutil

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_llm_dir / name, tmp_path / name)
    with pytest.raises(OmostError, match="cannot load the LLM"):
        LLMLoader().get(str(tmp_path))
