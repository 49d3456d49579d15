"""GPU workers on other machines: the bot's job queue on Redis (arq), the worker process, health.

Optional: needs the ``redis`` extra (``pip install 'omost-bot[redis]'``); arq and redis are imported
only when a Redis URL is configured. See docs/scaling.md.
"""
