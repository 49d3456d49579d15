"""Tiny LLMs built in code: the same classes, tokenizer kinds and chat templates as the real models.

Used by tests, benchmarks and the CPU demo. The weights are random, so the text is random too; what
they exercise is the machinery (loading, templates, streaming, sampling, cancel, quantisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from omost_engine.llm.system_prompt import AREAS, LOCATIONS, OFFSETS, SYSTEM_PROMPT

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

TinyFamily = Literal["llama-3", "phi-3"]

# Llama-3-Instruct's header format: bos once, then a header and an <|eot_id|> per message.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Phi-3's role tags, each message closed by <|end|>.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

SPECIAL_TOKENS: dict[TinyFamily, dict[str, str | list[str]]] = {
    "llama-3": {
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",
        "extra": ["<|start_header_id|>", "<|end_header_id|>"],
    },
    "phi-3": {
        "bos": "<s>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "extra": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    },
}
END_OF_TURN: dict[TinyFamily, str] = {"llama-3": "<|eot_id|>", "phi-3": "<|end|>"}

# Text the tokenizer is trained on: the system prompt plus canvas-program vocabulary.
_PROGRAM = (
    "```python\n# Initialize the canvas\ncanvas = Canvas()\n\n# Set a global description for the canvas\n"
    "canvas.set_global_description(\n    description='A fierce battle between warriors and a dragon.',\n"
    "    detailed_descriptions=[\n        'The warriors are on the left side of the image.',\n    ],\n"
    "    tags='battle, warriors, dragon, fierce, armor, swords, stormy sky',\n"
    "    HTML_web_color_name='darkslategray',\n)\n\n# Add a dragon in the center.\n"
    "canvas.add_local_description(\n    location='in the center',\n    offset='no offset',\n"
    "    area='a large square area',\n    distance_to_viewer=5.0,\n    description='A mighty dragon.',\n"
    "    detailed_descriptions=['Its scales glisten with a metallic sheen.'],\n    tags='dragon, wings',\n"
    "    atmosphere='Intense and chaotic.',\n    style='Epic fantasy',\n    quality_meta='High detail',\n"
    "    HTML_web_color_name='firebrick',\n)\n```\n"
)
TRAINING_TEXT = "\n".join(
    [
        SYSTEM_PROMPT,
        _PROGRAM,
        *LOCATIONS,
        *OFFSETS,
        *AREAS,
        "a dragon fighting warriors",
        "change the dragon to a dinosaur",
    ]
)


def build_tokenizer(family: TinyFamily = "llama-3", *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on TRAINING_TEXT, with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS[family]
    special_list = [specials["bos"], specials["eos"], specials["pad"], *specials["extra"]]
    special_list = list(dict.fromkeys(special_list))  # pad may repeat eos
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_list,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([TRAINING_TEXT], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        pad_token=specials["pad"],
        additional_special_tokens=list(specials["extra"]),
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE if family == "llama-3" else PHI3_TEMPLATE
    return tokenizer


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    family: TinyFamily = "llama-3",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    max_positions: int = 16384,
) -> PreTrainedModel:
    """A randomly initialised LlamaForCausalLM / Phi3ForCausalLM of about 100k parameters."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    end_ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN[family]), tokenizer.eos_token_id]
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids[0],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if family == "llama-3":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(**shape))
    else:
        model = Phi3ForCausalLM(Phi3Config(**shape, original_max_position_embeddings=max_positions))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=list(dict.fromkeys(end_ids)),
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
    )
    model.eval()
    return model


def save_tiny_llm(
    folder: str | Path,
    family: TinyFamily = "llama-3",
    *,
    quantization: Literal["none", "4bit", "8bit"] = "none",
    seed: int = 0,
) -> Path:
    """Write a loadable model folder (config, weights, tokenizer); quantised ones pre-quantised,
    with the bitsandbytes config stored in config.json as the published 4/8-bit repos have it."""
    import torch

    folder = Path(folder)
    tokenizer = build_tokenizer(family)
    model = build_model(tokenizer, family, seed=seed)
    plain = folder if quantization == "none" else folder.with_name(folder.name + "-plain")
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    if quantization != "none":
        save_prequantized(plain, folder, tokenizer, quantization, dtype=torch.float32)
    return folder


def save_prequantized(
    plain: Path,
    folder: Path,
    tokenizer: PreTrainedTokenizerFast,
    quantization: Literal["4bit", "8bit"],
    *,
    dtype: Any,
) -> None:
    """Quantise the model saved in ``plain`` with bitsandbytes and save it to ``folder``, as the published
    4/8-bit repos are (the bitsandbytes config in config.json)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
        if quantization == "4bit"
        else BitsAndBytesConfig(load_in_8bit=True)
    )
    quantized = AutoModelForCausalLM.from_pretrained(
        plain, quantization_config=quant, dtype=dtype, device_map={"": "cpu"}
    )
    quantized.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def forced_reply_processor(tokenizer: PreTrainedTokenizerFast, reply: str, end_token: str) -> Any:
    """A logits processor that makes any model write ``reply`` then ``end_token``, token by token.

    A random tiny model then goes through the real generate path (sampling, streaming, stopping)
    while producing a real canvas program: benchmarks and demos use it to measure the parsing and
    streaming work on realistic text.
    """
    import torch
    from transformers import LogitsProcessor

    target = tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(end_token)]

    class ForcedReply(LogitsProcessor):
        def __init__(self) -> None:
            self.start: int | None = None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.start is None:
                self.start = input_ids.shape[1]
            step = min(input_ids.shape[1] - self.start, len(target) - 1)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, target[step]] = 0.0
            return cast(torch.FloatTensor, forced)  # transformers types scores as the legacy FloatTensor

    return ForcedReply()
