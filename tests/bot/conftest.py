from simenv import sim_env, world  # noqa: F401  (fixtures)
