"""The real engine for ``omost-bot run``: the LLM chat service and the regional SDXL renderer sharing one
``ModelManager`` (offload: only the running stage's models on the GPU; resident: all of them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.config import BotConfig

if TYPE_CHECKING:
    from PIL.Image import Image

    from omost_engine.engine import ChatMessage, ChatResult, RenderResult
    from omost_engine.layout import Layout
    from omost_engine.llm.service import ChatService
    from omost_engine.params import LLMParams, RenderParams
    from omost_engine.progress import CancelToken, ProgressCallback
    from omost_engine.render.renderer import Renderer


@dataclass
class CombinedEngine:
    """``Engine``: ``chat`` from one object, ``render`` from another."""

    chat_service: ChatService
    renderer: Renderer

    def chat(
        self,
        history: Sequence[ChatMessage],
        prompt: str,
        params: LLMParams,
        *,
        llm: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> ChatResult:
        return self.chat_service.chat(
            history, prompt, params, llm=llm, on_progress=on_progress, cancel=cancel
        )

    def render(
        self,
        layout: Layout,
        params: RenderParams,
        *,
        model: str | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        count: int = 1,
        base: Image | None = None,
    ) -> RenderResult:
        return self.renderer.render(
            layout, params, model=model, on_progress=on_progress, cancel=cancel, count=count, base=base
        )


def create_engine(config: BotConfig) -> CombinedEngine:
    """Build the engine lazily: torch, transformers and diffusers load only here; models load on first use."""
    from omost_engine.llm.models import DEFAULT_LLM
    from omost_engine.llm.service import ChatService
    from omost_engine.memory import ModelManager
    from omost_engine.render.loading import DEFAULT_MODEL
    from omost_engine.render.renderer import Renderer

    manager = ModelManager(device=None if config.device == "auto" else config.device, mode=config.memory)
    # An endpoint URL is an LLM id of its own: ChatService talks to it instead of loading a model.
    default_llm = config.llm_endpoint or config.llm or DEFAULT_LLM
    chat = ChatService(manager=manager, default_llm=default_llm)
    renderer = Renderer(
        memory=manager, single_file_config=config.sdxl_config, default_model=config.sdxl or DEFAULT_MODEL
    )
    return CombinedEngine(chat_service=chat, renderer=renderer)
