"""The relay's SQLite file: API keys, webhook sources and recorded orchestrator messages.

This is a development tool's store. API keys are kept only as SHA-256 hex digests plus a 16-character
display prefix, but webhook secrets are stored as given, in plain text.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Literal

from kici_adapters import sqlfiles
from kici_adapters.relay import routing
from kici_core.errors import Conflict, InvalidInput, NotFound
from kici_core.jsontypes import JSONValue

KEY_PREFIX_CHARS = 16
RECORD_BATCH = 256
"""Recorded messages held in memory before they are written."""
RECORD_DELAY_SECONDS = 0.25
"""Longest a recorded message waits in memory while more arrive (the relay's sweeper also flushes)."""
_SOURCE_CACHE_MAX = 1024

GenericMethod = Literal["hmac_sha256", "bearer_token", "none"]
GENERIC_METHODS: tuple[GenericMethod, ...] = ("hmac_sha256", "bearer_token", "none")

_SQL = sqlfiles.load("kici_adapters.relay", "store.sql")


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return int(time.time() * 1000)


def hash_key(raw: str) -> str:
    """The stored form of an API key: lower-case hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """An orchestrator API key as listed (the raw key is never stored)."""

    id: int
    org: str
    name: str
    description: str
    prefix: str
    patterns: tuple[str, ...]
    created_at: int
    last_used_at: int | None
    revoked_at: int | None

    @property
    def revoked(self) -> bool:
        """Whether the key has been revoked."""
        return self.revoked_at is not None

    def to_json(self) -> dict[str, JSONValue]:
        """Listing form (no hash, no raw key)."""
        return {
            "id": self.id,
            "org": self.org,
            "name": self.name,
            "description": self.description,
            "prefix": self.prefix,
            "patterns": list(self.patterns),
            "createdAt": self.created_at,
            "lastUsedAt": self.last_used_at,
            "revokedAt": self.revoked_at,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """A webhook source the relay accepts HTTP deliveries for."""

    routing_key: str
    org: str
    provider: Literal["github", "generic"]
    source_id: str
    method: str
    secret: str
    header: str | None = None

    def to_json(self) -> dict[str, JSONValue]:
        """Listing form; only the last 4 characters of the secret."""
        return {
            "routingKey": self.routing_key,
            "org": self.org,
            "provider": self.provider,
            "sourceId": self.source_id,
            "method": self.method,
            "header": self.header,
            "secretHint": ("…" + self.secret[-4:]) if self.secret else "",
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedMessage:
    """One orchestrator → Platform frame the relay kept."""

    seq: int
    org: str
    connection_id: str
    type: str
    received_at: int
    body: JSONValue
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, JSONValue]:
        """API form for ``GET /api/messages``."""
        return {
            "seq": self.seq,
            "orgId": self.org,
            "connectionId": self.connection_id,
            "type": self.type,
            "receivedAt": self.received_at,
            "message": self.body,
            "problems": list(self.problems),
        }


class RelayStore:
    """Thread-safe access to the relay's SQLite file (``":memory:"`` works for throwaway use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # Source lookups (one per webhook) are answered from memory while the file is unchanged: this
        # connection's own source writes clear the map, and ``PRAGMA data_version`` moves whenever another
        # connection (``kici-relay source add`` in another process) commits.
        self._sources: dict[str, Source | None] = {}
        self._sources_version = -1
        with self._lock:
            self._db.execute(_SQL["busy_timeout"])
            self._db.execute(_SQL["journal_wal"])
            self._db.execute(_SQL["synchronous_normal"])
            self._db.executescript(_SQL["schema"])
            self._last_seq = self._highest_seq()
        # Recorded messages are written behind: kept in memory and inserted together, in one transaction, by the
        # next read, after RECORD_BATCH messages or RECORD_DELAY_SECONDS, or by flush()/close(). One insert
        # per orchestrator frame on the event loop cost a third of the relay's CPU per relayed webhook.
        self._pending: list[dict[str, str | int]] = []
        self._pending_since = 0.0

    def _highest_seq(self) -> int:
        row = self._db.execute(_SQL["message_seq_sequence"]).fetchone()
        top = self._db.execute(_SQL["message_seq_max"]).fetchone()
        return max(int(row[0]) if row else 0, int(top[0]))

    def flush(self) -> None:
        """Write the recorded messages still held in memory."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        self._db.execute(_SQL["begin"])
        try:
            self._db.executemany(_SQL["message_insert"], rows)
        except BaseException:
            self._db.execute(_SQL["rollback"])
            raise
        self._db.execute(_SQL["commit"])

    def close(self) -> None:
        """Write what is held in memory and close the database connection."""
        with self._lock:
            self._flush_locked()
            self._db.close()

    # --- API keys -----------------------------------------------------------------------------

    def create_key(
        self,
        *,
        org: str,
        name: str,
        patterns: tuple[str, ...] = (),
        description: str = "",
        now: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns it with the raw token, which is not stored and cannot be shown again.

        Raises:
            InvalidInput: empty org or name, or a malformed routing pattern.
        """
        if not org or not name:
            raise InvalidInput("an API key needs an org and a name")
        checked = tuple(routing.validate_pattern(p) for p in patterns)
        raw = "kici_" + secrets.token_hex(16)
        created = now_ms() if now is None else now
        with self._lock:
            cur = self._db.execute(
                _SQL["key_insert"],
                {
                    "org": org,
                    "name": name,
                    "description": description,
                    "prefix": raw[:KEY_PREFIX_CHARS],
                    "key_hash": hash_key(raw),
                    "patterns": json.dumps(checked),
                    "created_at": created,
                },
            )
            key_id = cur.lastrowid
        key = self.get_key(int(key_id or 0))
        assert key is not None
        return key, raw

    def get_key(self, key_id: int) -> ApiKey | None:
        """The key with this id, revoked or not."""
        with self._lock:
            row = self._db.execute(_SQL["key_by_id"], {"id": key_id}).fetchone()
        return None if row is None else _row_to_key(row)

    def list_keys(self, *, org: str | None = None) -> list[ApiKey]:
        """Every key (revoked ones included), oldest first, optionally for one org."""
        with self._lock:
            if org is None:
                rows = self._db.execute(_SQL["keys_all"]).fetchall()
            else:
                rows = self._db.execute(_SQL["keys_of_org"], {"org": org}).fetchall()
        return [_row_to_key(r) for r in rows]

    def revoke_key(self, prefix: str, *, now: int | None = None) -> ApiKey:
        """Soft-revoke the one live key whose display prefix starts with ``prefix``.

        Raises:
            NotFound: no live key has that prefix.
            Conflict: several live keys share it.
        """
        revoked = now_ms() if now is None else now
        with self._lock:
            rows = self._db.execute(_SQL["live_keys_by_prefix"], {"prefix": prefix}).fetchall()
            if not prefix or not rows:
                raise NotFound(f"no live API key with prefix {prefix!r}")
            if len(rows) > 1:
                raise Conflict(f"{len(rows)} live API keys share the prefix {prefix!r}; give more characters")
            key_id = int(rows[0]["id"])
            self._db.execute(_SQL["key_revoke"], {"revoked_at": revoked, "id": key_id})
        key = self.get_key(key_id)
        assert key is not None
        return key

    def authenticate(self, raw: str, *, now: int | None = None) -> ApiKey | None:
        """The live key whose hash matches ``raw`` (recording ``last_used_at``), else None."""
        used = now_ms() if now is None else now
        with self._lock:
            row = self._db.execute(_SQL["live_key_by_hash"], {"key_hash": hash_key(raw)}).fetchone()
            if row is None:
                return None
            self._db.execute(_SQL["key_used"], {"used_at": used, "id": row["id"]})
        return self.get_key(int(row["id"]))

    def revoked_key_ids(self, key_ids: set[int]) -> set[int]:
        """Those of ``key_ids`` that are revoked or gone."""
        if not key_ids:
            return set()
        with self._lock:
            rows = self._db.execute(_SQL["live_keys_among"], {"ids": json.dumps(sorted(key_ids))}).fetchall()
        return key_ids - {int(r["id"]) for r in rows}

    # --- sources ------------------------------------------------------------------------------

    def add_github_source(self, *, org: str, app_id: str, webhook_secret: str) -> Source:
        """Add or replace a GitHub App source (routing key ``github:<appId>``)."""
        if not org or not app_id or not webhook_secret:
            raise InvalidInput("a GitHub source needs an org, an app id and a webhook secret")
        source = Source(
            routing_key=routing.github_key(app_id),
            org=org,
            provider="github",
            source_id=app_id,
            method="hmac_sha256",
            secret=webhook_secret,
            header="x-hub-signature-256",
        )
        self._put_source(source)
        return source

    def add_generic_source(
        self, *, org: str, source_id: str, secret: str, method: str = "hmac_sha256", header: str | None = None
    ) -> Source:
        """Add or replace a generic source (routing key ``generic:<orgId>:<sourceId>``).

        Raises:
            InvalidInput: unknown method, or a secret missing for a method that needs one.
        """
        if method not in GENERIC_METHODS:
            raise InvalidInput(f"unknown verification method {method!r}; use one of {', '.join(GENERIC_METHODS)}")
        if not org or not source_id or ":" in source_id:
            raise InvalidInput("a generic source needs an org and a source id without ':'")
        if method != "none" and not secret:
            raise InvalidInput(f"method {method} needs a secret")
        chosen = header or {"hmac_sha256": "x-signature-256", "bearer_token": "authorization"}.get(method)
        source = Source(
            routing_key=routing.generic_key(org, source_id),
            org=org,
            provider="generic",
            source_id=source_id,
            method=method,
            secret=secret,
            header=chosen.lower() if chosen else None,
        )
        self._put_source(source)
        return source

    def _put_source(self, source: Source) -> None:
        with self._lock:
            self._sources.clear()
            self._db.execute(
                _SQL["source_put"],
                {
                    "routing_key": source.routing_key,
                    "org": source.org,
                    "provider": source.provider,
                    "source_id": source.source_id,
                    "method": source.method,
                    "secret": source.secret,
                    "header": source.header,
                    "created_at": now_ms(),
                },
            )

    def get_source(self, routing_key: str) -> Source | None:
        """The source with this routing key, if any."""
        with self._lock:
            version = self._db.execute(_SQL["data_version"]).fetchone()[0]
            if version != self._sources_version:
                self._sources.clear()
                self._sources_version = version
            if routing_key in self._sources:
                return self._sources[routing_key]
            row = self._db.execute(_SQL["source_by_routing_key"], {"routing_key": routing_key}).fetchone()
            source = None if row is None else _row_to_source(row)
            if len(self._sources) >= _SOURCE_CACHE_MAX:
                self._sources.clear()
            self._sources[routing_key] = source
        return source

    def list_sources(self) -> list[Source]:
        """Every source, by routing key."""
        with self._lock:
            rows = self._db.execute(_SQL["sources_all"]).fetchall()
        return [_row_to_source(r) for r in rows]

    def remove_source(self, routing_key: str) -> None:
        """Delete a source.

        Raises:
            NotFound: no such routing key.
        """
        with self._lock:
            self._sources.clear()
            cur = self._db.execute(_SQL["source_delete"], {"routing_key": routing_key})
        if cur.rowcount == 0:
            raise NotFound(f"no source with routing key {routing_key!r}")

    # --- recorded messages --------------------------------------------------------------------

    def record_message(
        self,
        *,
        org: str,
        connection_id: str,
        type: str,
        body: JSONValue,
        problems: tuple[str, ...] = (),
        now: int | None = None,
        raw: str | None = None,
    ) -> RecordedMessage:
        """Append one received frame (``raw``: its JSON text, when at hand, stored instead of encoding ``body``
        again); ``seq`` increases strictly, across restarts too (written behind: see :meth:`flush`)."""
        received = now_ms() if now is None else now
        with self._lock:
            self._last_seq += 1
            seq = self._last_seq
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(
                {
                    "seq": seq,
                    "org": org,
                    "connection_id": connection_id,
                    "type": type,
                    "received_at": received,
                    "body": json.dumps(body) if raw is None else raw,
                    "problems": json.dumps(list(problems)) if problems else "[]",
                }
            )
            if len(self._pending) >= RECORD_BATCH or time.monotonic() - self._pending_since >= RECORD_DELAY_SECONDS:
                self._flush_locked()
        return RecordedMessage(
            seq=seq,
            org=org,
            connection_id=connection_id,
            type=type,
            received_at=received,
            body=body,
            problems=problems,
        )

    def list_messages(
        self,
        *,
        since: int = 0,
        types: tuple[str, ...] = (),
        org: str | None = None,
        limit: int = 500,
    ) -> list[RecordedMessage]:
        """Messages with ``seq > since`` in order, optionally only of ``types`` and of one org."""
        params = {"since": since, "types": json.dumps(list(types)) if types else None, "org": org, "limit": limit}
        with self._lock:
            self._flush_locked()
            rows = self._db.execute(_SQL["messages_page"], params).fetchall()
        return [
            RecordedMessage(
                seq=int(r["seq"]),
                org=str(r["org"]),
                connection_id=str(r["connection_id"]),
                type=str(r["type"]),
                received_at=int(r["received_at"]),
                body=json.loads(r["body"]),
                problems=tuple(json.loads(r["problems"])),
            )
            for r in rows
        ]


def _row_to_key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=int(row["id"]),
        org=str(row["org"]),
        name=str(row["name"]),
        description=str(row["description"]),
        prefix=str(row["prefix"]),
        patterns=tuple(json.loads(row["patterns"])),
        created_at=int(row["created_at"]),
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _row_to_source(row: sqlite3.Row) -> Source:
    provider = str(row["provider"])
    return Source(
        routing_key=str(row["routing_key"]),
        org=str(row["org"]),
        provider="github" if provider == "github" else "generic",
        source_id=str(row["source_id"]),
        method=str(row["method"]),
        secret=str(row["secret"]),
        header=row["header"],
    )
