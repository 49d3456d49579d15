"""GPU workers on other machines: the bot's job queue on Redis streams, the worker process, health.

Optional: needs the ``redis`` extra (``pip install 'omost-bot[redis]'``); redis is imported
only when a Redis URL is configured. See docs/scaling.md.
"""
