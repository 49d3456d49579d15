import sys
from pathlib import Path

# The simcord fixtures live in one module next to the bot's tests (tests/bot/simenv.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bot"))

from simenv import pytest_configure, sim_env, world  # noqa: E402, F401  (fixtures)
