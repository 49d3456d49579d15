"""Command-line subcommands that need only the engine (no discord).

Each module defines ``register(subparsers)`` adding its subcommand(s); a subcommand's handler
is stored as ``func`` in its parser defaults and returns the process exit status.
"""

from omost_engine.noise import quiet_library_noise

quiet_library_noise()  # before any subcommand imports transformers, diffusers or bitsandbytes
