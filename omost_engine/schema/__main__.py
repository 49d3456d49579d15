"""``python -m omost_engine.schema``: write layout.schema.json from the declarations."""

from omost_engine.schema import main

main()
