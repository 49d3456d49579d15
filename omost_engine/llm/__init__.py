"""The Omost LLM step: models, the system prompt, chat backends (local, remote, scripted), the service.

Importing this package stays light (no torch); the heavy parts load when their module is imported.
"""

from omost_engine.llm.models import DEFAULT_LLM, KNOWN_MODELS, KnownModel, is_unfiltered, known_model
from omost_engine.llm.system_prompt import SYSTEM_PROMPT

__all__ = ["DEFAULT_LLM", "KNOWN_MODELS", "SYSTEM_PROMPT", "KnownModel", "is_unfiltered", "known_model"]
