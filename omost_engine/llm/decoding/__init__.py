"""Faster and never-invalid decoding for local models: prompt-lookup drafts, the canvas grammar with
forced runs, both in one decode loop (see docs/decoding.md)."""

from omost_engine.llm.decoding.grammar import CanvasNames, GrammarFactory, GrammarLimits, GrammarState
from omost_engine.llm.decoding.loop import (
    CausalLMStepper,
    DecodeConfig,
    DecodeStats,
    LoopResult,
    Stepper,
    decode,
)
from omost_engine.llm.decoding.prompt_lookup import PromptLookup

__all__ = [
    "CanvasNames",
    "CausalLMStepper",
    "DecodeConfig",
    "DecodeStats",
    "GrammarFactory",
    "GrammarLimits",
    "GrammarState",
    "LoopResult",
    "PromptLookup",
    "Stepper",
    "decode",
]
