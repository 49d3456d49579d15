import hashlib
import json
from pathlib import Path

from omost_engine.llm.system_prompt import AREAS, LOCATIONS, OFFSETS, SYSTEM_PROMPT, SYSTEM_PROMPT_SHA256
from omost_engine.tables import AREAS as TABLE_AREAS
from omost_engine.tables import LOCATIONS as TABLE_LOCATIONS
from omost_engine.tables import OFFSETS as TABLE_OFFSETS

GOLDENS = Path(__file__).resolve().parents[2] / "fixtures" / "goldens"


def test_system_prompt_matches_the_trained_one_exactly() -> None:
    fingerprint = json.loads((GOLDENS / "63_system_prompt_fingerprint.json").read_text())
    data = SYSTEM_PROMPT.encode("utf-8")
    assert len(SYSTEM_PROMPT) == fingerprint["length_chars"] == 1269
    assert len(data) == fingerprint["length_utf8_bytes"]
    assert hashlib.sha256(data).hexdigest() == fingerprint["sha256_utf8"] == SYSTEM_PROMPT_SHA256
    assert SYSTEM_PROMPT.count("\n") + 1 == fingerprint["line_count"]
    assert SYSTEM_PROMPT.startswith(fingerprint["starts_with"])
    assert SYSTEM_PROMPT.endswith(fingerprint["ends_with"])


def test_system_prompt_names_are_the_canvas_tables() -> None:
    assert list(LOCATIONS) == list(TABLE_LOCATIONS)
    assert list(OFFSETS) == list(TABLE_OFFSETS)
    assert list(AREAS) == list(TABLE_AREAS)
