"""The docs' tables of parameters and settings are the declarations' own (issue 11: ranges written once)."""

from __future__ import annotations

from bot.doc_tables import DOCS, TABLES, main, rewrite


def test_every_table_in_the_docs_is_what_the_declarations_give() -> None:
    found = set()
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert rewrite(text) == text, f"{path.name} is out of date: run python -m bot.doc_tables"
        found |= {name for name in TABLES if f"<!-- table:{name} -->" in text}
    assert found == set(TABLES)
    assert main(["--check"]) == 0


def test_a_changed_range_shows_in_the_generated_table() -> None:
    stale = "<!-- table:render-params -->\n| field | allowed |\n| `steps` | from 1 to 99 |\n<!-- /table -->"
    fresh = rewrite(stale)
    assert "a whole number from 1 to 100" in fresh and "from 1 to 99" not in fresh
