"""One SQLite file (WAL) through aiosqlite, and the migration runner for ``migrations/V<n>__<name>.sql``."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sysconfig
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from omost_engine.errors import OmostError

# The SQL files live in the top-level migrations/ folder. A checkout (or an editable install) reads them there;
# a wheel installs them as data files (pyproject.toml: [tool.setuptools.data-files]) under <data>/INSTALLED_DIR.
CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "migrations"
INSTALLED_DIR = Path("share", "omost-bot", "migrations")


def migration_dirs(*, checkout: Path = CHECKOUT_DIR, data_roots: Iterable[Path] | None = None) -> list[Path]:
    """Where the migrations may be, in order: the checkout, then the install schemes' data folders
    (the environment's, then the user's for ``pip install --user``)."""
    if data_roots is None:
        schemes = [sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")]
        data_roots = [Path(sysconfig.get_path("data", scheme)) for scheme in dict.fromkeys(schemes)]
    return [checkout, *(root / INSTALLED_DIR for root in data_roots)]


def default_migrations_dir(**where: Any) -> Path:
    """The first of ``migration_dirs()`` holding SQL files (the checkout's when none does, for the error)."""
    candidates = migration_dirs(**where)
    return next((d for d in candidates if any(d.glob("V*__*.sql"))), candidates[0])


_MIGRATION_NAME = re.compile(r"^V(?P<version>\d+)__(?P<name>\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def find_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: the checkout's or the installed ones), sorted; versions must
    run 1, 2, 3 ... without gaps."""
    directory = default_migrations_dir() if directory is None else directory
    found: list[Migration] = []
    for path in directory.glob("*.sql"):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise OmostError(
                f"migration file {path.name!r} is not named V<number>__<name>.sql",
                parameter="migrations",
                value=path.name,
                allowed="V<number>__<name>.sql",
            )
        found.append(Migration(int(match["version"]), match["name"], path.read_text(encoding="utf-8")))
    if not found:  # an empty schema would look like a working database; refuse instead
        raise OmostError(
            f"no migrations found in {str(directory)!r}; reinstall omost-bot (pip install .) or run it from a checkout",
            parameter="migrations",
            value=str(directory),
        )
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise OmostError(
                f"migrations must be numbered 1, 2, 3 ... without gaps; V{expected} is missing",
                parameter="migrations",
                value=migration.version,
            )
    return found


class Database:
    """An open connection plus helpers; one per bot. Rows come back as ``sqlite3.Row``."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self.connection = connection
        self.path = path
        # Statements of concurrent tasks must not land inside another task's open transaction.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path, *, migrations: Iterable[Migration] | None = None) -> Database:
        """Open (creating) the file, switch to WAL and bring the schema up to date."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        connection = aiosqlite.connect(path, isolation_level=None)  # we manage transactions
        try:
            await connection
        except Exception as exc:  # sqlite3.OperationalError: unreadable path, not a database ...
            # aiosqlite stops its worker thread in the background; let it finish while the loop still runs.
            worker = getattr(connection, "_thread", None)
            if worker is not None:
                await asyncio.to_thread(worker.join, 5.0)
            raise OmostError(
                f"cannot open the database {str(path)!r}: {exc}", parameter="db", value=str(path)
            ) from exc
        connection.row_factory = aiosqlite.Row
        db = cls(connection, path)
        try:
            # WAL with synchronous=NORMAL: a commit survives a crash of the bot (not of the OS) without an
            # fsync per write, which would cost milliseconds on every status change.
            try:
                for pragma in (
                    "journal_mode=WAL",
                    "synchronous=NORMAL",
                    "foreign_keys=ON",
                    "busy_timeout=5000",
                ):
                    await db._execute(f"PRAGMA {pragma}")
            except sqlite3.DatabaseError as exc:  # the first read of the file: "file is not a database"
                raise OmostError(
                    f"cannot open the database {str(path)!r}: it is not an SQLite database ({exc})",
                    parameter="db",
                    value=str(path),
                    allowed="an SQLite file, or a new path",
                ) from exc
            await db.migrate(find_migrations() if migrations is None else list(migrations))
        except BaseException:
            await connection.close()
            raise
        return db

    async def close(self) -> None:
        await self.connection.close()

    async def version(self) -> int:
        await self._execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at REAL NOT NULL)"
        )
        row = await self.fetchone("SELECT MAX(version) AS v FROM schema_version")
        return int(row["v"] or 0) if row else 0

    async def migrate(self, migrations: list[Migration]) -> list[int]:
        """Apply the missing migrations, each in its own transaction; returns the versions applied."""
        current = await self.version()
        newest = migrations[-1].version if migrations else 0
        if current > newest:
            raise OmostError(
                f"the database {str(self.path)!r} has schema version {current}, newer than this bot "
                f"knows (up to {newest}); upgrade the bot or use another OMOST_DB file",
                parameter="db",
                value=current,
                allowed=f"schema versions up to {newest}",
            )
        applied = []
        for migration in migrations:
            if migration.version <= current:
                continue
            # executescript would commit on its own; run the statements inside one explicit transaction.
            await self._execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(migration.sql):
                    await self._execute(statement)
                await self._execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                await self._execute("COMMIT")
            except BaseException as exc:
                await self._execute("ROLLBACK")
                if isinstance(exc, Exception):
                    raise OmostError(
                        f"migration V{migration.version}__{migration.name} failed: {exc}",
                        parameter="db",
                        value=migration.version,
                    ) from exc
                raise
            applied.append(migration.version)
        return applied

    async def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int | None:
        """Run one write statement (its own transaction); returns the last row id."""
        async with self._write_lock:
            return await self._execute(sql, params)

    async def _execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int | None:
        cursor = await self.connection.execute(sql, params)
        rowid = cursor.lastrowid
        await cursor.close()
        return rowid

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """Several writes that succeed or fail together."""
        async with self._write_lock:
            await self._execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self)
            except BaseException:
                await self._execute("ROLLBACK")
                raise
            await self._execute("COMMIT")

    async def fetchone(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> aiosqlite.Row | None:
        async with self.connection.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[aiosqlite.Row]:
        async with self.connection.execute(sql, params) as cursor:
            return list(await cursor.fetchall())


class Transaction:
    """The handle inside ``Database.transaction()``: writes without re-taking the lock."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int | None:
        return await self._db._execute(sql, params)


def _split_sql(script: str) -> list[str]:
    """The statements of a migration script, in order. A ';' ends a statement only where SQLite says
    the statement is complete (``sqlite3.complete_statement``): not inside a string, a quoted name, a
    comment or a ``CREATE TRIGGER ... BEGIN ... END`` body. Comments stay with their statement (a
    comment alone is a no-op); a last statement may omit its ';'."""
    statements: list[str] = []
    current = ""
    pieces = script.split(";")
    for index, piece in enumerate(pieces):
        current += piece if index == len(pieces) - 1 else piece + ";"
        if sqlite3.complete_statement(current) or index == len(pieces) - 1:
            if current.strip() not in ("", ";"):
                statements.append(current.strip())
            current = ""
    return statements
