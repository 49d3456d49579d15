"""Slash-command cogs: thin layers that parse, check permissions and reply; the rules live in bot/."""
