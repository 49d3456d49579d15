"""omost_engine: Omost canvas programs, the LLM that writes them and the regional SDXL renderer.

A plain library: the bot, the CLI and the tests all use it. It never imports discord.
"""

from omost_engine.errors import OmostError

__all__ = ["OmostError"]
