"""Forward-only schema migrations.

Migrations are the numbered files ``kici_adapters/postgres/migrations/NNNN_snake_name.sql`` shipped in the
package, applied in name order. One run:

1. opens its own connection and takes ``pg_advisory_lock(543210001)`` (the key upstream uses), so any
   number of processes may migrate the same database at once: they queue, and later ones find nothing
   left to do;
2. reads ``schema_migrations`` (name, sha256 checksum, applied_at), refusing with ``ConfigError`` when an
   applied file was edited, is missing from this release, or when the applied set is not a prefix of the
   known list;
3. runs each pending file in its own transaction together with its ``schema_migrations`` row, so a
   migration is either fully applied and recorded, or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import anyio.to_thread
import psycopg

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import redact_url, translate_errors
from kici_core.errors import ConfigError, KiciError

ADVISORY_LOCK_KEY = 543210001
MIGRATIONS_PACKAGE = "kici_adapters.postgres"
MIGRATIONS_DIR = "migrations"
_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")

_log = logging.getLogger("kici.migrate")

_SQL = queries.load("migrate.sql")


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    name: str
    sql: bytes

    @property
    def checksum(self) -> str:
        """Lowercase hex sha256 of the file's bytes."""
        return hashlib.sha256(self.sql).hexdigest()


def known_migrations() -> list[Migration]:
    """The migrations shipped with this release, in the order they apply.

    Raises:
        ConfigError: a ``.sql`` file in the migrations directory is not named ``NNNN_snake_name.sql``.
    """
    folder = resources.files(MIGRATIONS_PACKAGE).joinpath(MIGRATIONS_DIR)
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        if not _NAME.match(entry.name):
            raise ConfigError(f"migration file {entry.name} is not named NNNN_snake_name.sql")
        found.append(Migration(name=entry.name, sql=entry.read_bytes()))
    return sorted(found, key=lambda m: m.name)


def plan(known: list[Migration], applied: dict[str, str]) -> list[Migration]:
    """The migrations still to apply, after checking the database's record against ``known``.

    Args:
        known: this release's migrations, in order.
        applied: name -> checksum from ``schema_migrations``.

    Raises:
        ConfigError: naming the offending file, when an applied migration was edited, is unknown to this
            release, or was applied out of order.
    """
    names = [m.name for m in known]
    for name in sorted(applied):
        if name not in names:
            raise ConfigError(
                f"the database has migration {name} applied, which this release does not ship "
                "(was it written by a newer version?)"
            )
    pending: list[Migration] = []
    for migration in known:
        recorded = applied.get(migration.name)
        if recorded is None:
            pending.append(migration)
        elif pending:
            raise ConfigError(
                f"migration {pending[0].name} is not applied but the later {migration.name} is; "
                "migrations are forward-only and must apply in order"
            )
        elif recorded != migration.checksum:
            raise ConfigError(
                f"migration {migration.name} was edited after it was applied "
                f"(checksum {recorded[:12]}… in the database, {migration.checksum[:12]}… in the file); "
                "never edit an applied migration: restore it and add a new numbered file"
            )
    return pending


def apply_migrations(url: str, migrations: list[Migration] | None = None) -> list[str]:
    """Apply every pending migration to the database at ``url``; return the names applied (in order).

    Safe to run from several processes at once. ``migrations`` overrides the shipped list (tests).

    Raises:
        ConfigError: the recorded history does not match the files (see :func:`plan`).
        StorageUnavailable: the database cannot be reached.
    """
    migrations = known_migrations() if migrations is None else migrations
    applied_now: list[str] = []
    with translate_errors(url), psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        _log.info("Acquiring migration lock... (%s)", redact_url(url))
        conn.execute(_SQL["migration_lock"], {"key": ADVISORY_LOCK_KEY})
        try:
            _log.info("Migration lock acquired")
            conn.execute(_SQL["migrations_tracking_create"])
            rows = conn.execute(_SQL["migrations_checksums"]).fetchall()
            for migration in plan(migrations, {str(name): str(checksum) for name, checksum in rows}):
                started = time.monotonic()
                try:
                    with conn.transaction():
                        conn.execute(migration.sql)
                        conn.execute(_SQL["migration_record"], {"name": migration.name, "checksum": migration.checksum})
                except psycopg.OperationalError:
                    _log.error("%s ... FAILED", migration.name)
                    raise
                except psycopg.Error as exc:
                    _log.error("%s ... FAILED", migration.name)
                    raise KiciError(f"migration {migration.name} failed: {exc}") from exc
                _log.info("%s ... OK (%dms)", migration.name, (time.monotonic() - started) * 1000)
                applied_now.append(migration.name)
        finally:
            if not conn.closed:
                conn.execute(_SQL["migration_unlock"], {"key": ADVISORY_LOCK_KEY})
    if applied_now:
        _log.info("Applied %d migration(s)", len(applied_now))
    else:
        _log.info("Database schema is up to date")
    return applied_now


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationState:
    """A shipped migration and when it was applied (None: pending)."""

    name: str
    applied_at: datetime | None


async def migration_states(url: str) -> list[MigrationState]:
    """Every shipped migration, in order, with the time the database recorded it as applied.

    Raises:
        StorageUnavailable: the database cannot be reached.
    """
    applied: dict[str, datetime] = {}
    with translate_errors(url):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10) as conn:
            cur = await conn.execute(_SQL["migrations_tracked"])
            row = await cur.fetchone()
            if row and row[0]:
                cur = await conn.execute(_SQL["migrations_applied"])
                applied = {str(name): at for name, at in await cur.fetchall()}
    return [MigrationState(name=m.name, applied_at=applied.get(m.name)) for m in known_migrations()]


async def apply_migrations_async(url: str) -> list[str]:
    """:func:`apply_migrations` in a worker thread, for callers inside the event loop."""
    return await anyio.to_thread.run_sync(apply_migrations, url)
