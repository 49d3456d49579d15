"""The layout file's JSON Schema, generated from the declarations (``omost_engine.layout``).

``python -m omost_engine.schema`` writes ``layout.schema.json`` next to this file; a test checks that the
file in the repository is what the declarations give, and validates every file the project writes.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("layout.schema.json")


def schema_text() -> str:
    from omost_engine.layout import layout_json_schema

    return json.dumps(layout_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    SCHEMA_PATH.write_text(schema_text(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
