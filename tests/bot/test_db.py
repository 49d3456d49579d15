"""The SQLite file and its migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.db import Database, Migration, find_migrations
from omost_engine.errors import OmostError


async def test_fresh_database_gets_every_migration_in_wal_mode(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        assert await db.version() == len(find_migrations())
        mode = await db.fetchone("PRAGMA journal_mode")
        assert mode[0] == "wal"
        tables = {r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"conversations", "turns", "layouts", "jobs", "settings", "meta", "schema_version"} <= tables
    finally:
        await db.close()
    again = await Database.open(tmp_path / "bot.sqlite3")  # reopening applies nothing twice
    try:
        rows = await again.fetchall("SELECT version FROM schema_version")
        assert [r["version"] for r in rows] == list(range(1, len(find_migrations()) + 1))
    finally:
        await again.close()


async def test_newer_database_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    await db.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (99, 'future', 0)")
    await db.close()
    newest = len(find_migrations())
    with pytest.raises(OmostError, match=rf"schema version 99, newer than this bot knows \(up to {newest}\)"):
        await Database.open(tmp_path / "bot.sqlite3")


async def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    migrations = [
        Migration(1, "good", "CREATE TABLE a (x INTEGER);"),
        Migration(2, "bad", "CREATE TABLE b (x INTEGER);\nINSERT INTO missing VALUES (1);"),
    ]
    with pytest.raises(OmostError, match="migration V2__bad failed: no such table: missing"):
        await Database.open(tmp_path / "bot.sqlite3", migrations=migrations)
    db = await Database.open(tmp_path / "bot.sqlite3", migrations=migrations[:1])
    try:
        tables = {r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "a" in tables and "b" not in tables and await db.version() == 1
    finally:
        await db.close()


def test_migration_files_must_be_numbered_without_gaps(tmp_path: Path) -> None:
    with pytest.raises(OmostError, match="no migrations found"):
        find_migrations(tmp_path)
    (tmp_path / "V1__one.sql").write_text("SELECT 1;")
    (tmp_path / "V3__three.sql").write_text("SELECT 1;")
    with pytest.raises(OmostError, match="V2 is missing"):
        find_migrations(tmp_path)
    (tmp_path / "notes.sql").write_text("")
    with pytest.raises(OmostError, match="not named V<number>__<name>.sql"):
        find_migrations(tmp_path)


async def test_unopenable_path_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(OmostError, match="cannot open the database"):
        await Database.open(tmp_path / "dir.sqlite3")


async def test_transaction_rolls_back_together(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "bot.sqlite3")
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
                raise RuntimeError("boom")
        assert await db.fetchone("SELECT * FROM meta WHERE key = 'a'") is None
    finally:
        await db.close()


def test_installed_migrations_are_found_without_a_checkout(tmp_path: Path) -> None:
    from bot.db import CHECKOUT_DIR, INSTALLED_DIR, default_migrations_dir

    installed = tmp_path / "prefix" / INSTALLED_DIR
    installed.mkdir(parents=True)
    for sql in CHECKOUT_DIR.glob("*.sql"):
        (installed / sql.name).write_bytes(sql.read_bytes())
    found = default_migrations_dir(
        checkout=tmp_path / "no-checkout", data_roots=[tmp_path / "empty", tmp_path / "prefix"]
    )
    assert found == installed
    assert find_migrations(found) == find_migrations(CHECKOUT_DIR)
    # With neither, the error names the checkout folder it looked in first.
    assert (
        default_migrations_dir(checkout=tmp_path / "no-checkout", data_roots=[]) == tmp_path / "no-checkout"
    )


def test_the_wheel_ships_every_migration_where_the_runner_looks(tmp_path: Path) -> None:
    """Build the wheel from the tracked sources; its data files, laid out as pip installs them, are found."""
    import subprocess
    import sys
    import zipfile

    from bot.db import CHECKOUT_DIR, INSTALLED_DIR, default_migrations_dir

    repo = CHECKOUT_DIR.parent
    source = tmp_path / "src"
    source.mkdir()
    tracked = subprocess.run(
        ["git", "ls-files", "bot", "cogs", "omost_engine", "migrations", "pyproject.toml", "README.md"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((repo / name).read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    prefix = tmp_path / "prefix"
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            _, data, rest = name.partition(".data/data/")  # pip puts these under the scheme's data folder
            if data:
                (prefix / rest).parent.mkdir(parents=True, exist_ok=True)
                (prefix / rest).write_bytes(archive.read(name))
    found = default_migrations_dir(checkout=tmp_path / "no-checkout", data_roots=[prefix])
    assert found == prefix / INSTALLED_DIR
    assert find_migrations(found) == find_migrations(CHECKOUT_DIR)


def test_statements_split_only_where_sqlite_says_they_end() -> None:
    from bot.db import _split_sql

    script = (
        "-- notes; the first table\n"
        "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('a; b -- c');\n"
        "/* a; block */ CREATE TRIGGER t AFTER INSERT ON notes BEGIN\n"
        "  UPDATE notes SET text = text || ';';\n"
        "  SELECT 1;\n"
        "END;\n"
        "SELECT 'last; without a semicolon'\n"
        "-- trailing; comment\n"
    )
    assert _split_sql(script) == [
        "-- notes; the first table\nCREATE TABLE notes (text TEXT);",
        "INSERT INTO notes VALUES ('a; b -- c');",
        "/* a; block */ CREATE TRIGGER t AFTER INSERT ON notes BEGIN\n  UPDATE notes SET text = text || ';';\n"
        "  SELECT 1;\nEND;",
        "SELECT 'last; without a semicolon'\n-- trailing; comment",
    ]
    assert _split_sql(" ;\n;; -- nothing\n") == ["-- nothing"]


async def test_a_migration_with_semicolons_in_strings_and_a_trigger_applies(tmp_path: Path) -> None:
    migrations = [
        Migration(
            1,
            "triggers",
            (
                "CREATE TABLE notes (text TEXT NOT NULL);\n"
                "CREATE TABLE audit (note TEXT NOT NULL, seen TEXT NOT NULL);\n"
                "INSERT INTO notes VALUES ('keep; this -- whole');\n"
                "CREATE TRIGGER note_audit AFTER INSERT ON notes BEGIN\n"
                "  INSERT INTO audit VALUES (new.text, 'first;');\n"
                "  INSERT INTO audit VALUES (new.text, 'second');\n"
                "END;\n"
            ),
        )
    ]
    db = await Database.open(tmp_path / "bot.sqlite3", migrations=migrations)
    try:
        assert [r["text"] for r in await db.fetchall("SELECT text FROM notes")] == ["keep; this -- whole"]
        await db.execute("INSERT INTO notes VALUES ('x')")
        rows = await db.fetchall("SELECT note, seen FROM audit ORDER BY rowid")
        assert [tuple(r) for r in rows] == [("x", "first;"), ("x", "second")]
    finally:
        await db.close()


async def test_a_failure_after_a_trigger_still_rolls_the_whole_migration_back(tmp_path: Path) -> None:
    migrations = [
        Migration(
            1,
            "bad",
            (
                "CREATE TABLE notes (text TEXT);\n"
                "CREATE TRIGGER t AFTER INSERT ON notes BEGIN UPDATE notes SET text = 'a;b'; END;\n"
                "INSERT INTO missing VALUES (1);\n"
            ),
        )
    ]
    with pytest.raises(OmostError, match="migration V1__bad failed: no such table: missing"):
        await Database.open(tmp_path / "bot.sqlite3", migrations=migrations)
    db = await Database.open(tmp_path / "bot.sqlite3", migrations=[Migration(1, "empty", "SELECT 1;")])
    try:
        names = {r["name"] for r in await db.fetchall("SELECT name FROM sqlite_master")}
        assert "notes" not in names and "t" not in names
    finally:
        await db.close()
