from simenv import pytest_configure, sim_env, world  # noqa: F401  (fixtures)
