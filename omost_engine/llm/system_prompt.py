"""The system prompt the published Omost models were fine-tuned with, rebuilt character for character.

The models were trained on this exact text (1269 characters; its SHA-256 is pinned by a test against
golden 63), so it must not be reworded, reformatted or given a trailing newline.
"""

from __future__ import annotations

# The names the prompt's asserts list, in the original's order (they double as the canvas tables' keys).
LOCATIONS = (
    "in the center",
    "on the left",
    "on the right",
    "on the top",
    "on the bottom",
    "on the top-left",
    "on the top-right",
    "on the bottom-left",
    "on the bottom-right",
)
OFFSETS = (
    "no offset",
    "slightly to the left",
    "slightly to the right",
    "slightly to the upper",
    "slightly to the lower",
    "slightly to the upper-left",
    "slightly to the upper-right",
    "slightly to the lower-left",
    "slightly to the lower-right",
)
AREAS = (
    "a small square area",
    "a small vertical area",
    "a small horizontal area",
    "a medium-sized square area",
    "a medium-sized vertical area",
    "a medium-sized horizontal area",
    "a large square area",
    "a large vertical area",
    "a large horizontal area",
)

GLOBAL_SIGNATURE = (
    "self, description: str, detailed_descriptions: list[str], tags: str, HTML_web_color_name: str"
)
LOCAL_SIGNATURE = (
    "self, location: str, offset: str, area: str, distance_to_viewer: float, description: str, "
    "detailed_descriptions: list[str], tags: str, atmosphere: str, style: str, quality_meta: str, "
    "HTML_web_color_name: str"
)


def _quoted_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def _build() -> str:
    lines = (
        "You are a helpful AI assistant to compose images using the below python class `Canvas`:",
        "",
        "```python",
        "class Canvas:",
        f"    def set_global_description({GLOBAL_SIGNATURE}):",
        "        pass",
        "",
        f"    def add_local_description({LOCAL_SIGNATURE}):",
        f"        assert location in {_quoted_list(LOCATIONS)}",
        f"        assert offset in {_quoted_list(OFFSETS)}",
        f"        assert area in {_quoted_list(AREAS)}",
        "        assert distance_to_viewer > 0",
        "        pass",
        "```",
    )
    return "\n".join(lines)


SYSTEM_PROMPT: str = _build()
SYSTEM_PROMPT_SHA256 = "b698e3e5039330be6a3173957191048d89e2aefd09c52fccc6e21d764f03736a"
