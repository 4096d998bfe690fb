"""The PostgreSQL secret store: scoped secrets in ``scoped_secrets``, sealed with :mod:`kici_adapters.secrets`
(AES-256-GCM, AAD ``"<org_id>:<scope>:<key>"``), every change audited in ``secret_audit_log``; and the master
key's rotation."""

from __future__ import annotations

import time
from collections.abc import Callable

from psycopg.types.json import Jsonb

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Connection, Database
from kici_adapters.secrets import EMPTY_SCOPE_SENTINEL, SecretCipher, scoped_secret_aad

__all__ = ["PgSecretStore", "rotate_key"]

_SQL = queries.load("secrets.sql")


class PgSecretStore:
    """Scoped secrets in ``scoped_secrets``, encrypted at rest.

    Reads go through a short in-process cache (``cache_seconds``, default 2 s) that this store's own writes
    invalidate; another process's write is seen once the entry expires. Every mutation also writes a
    ``secret_audit_log`` row in the same transaction. Values never appear in logs or errors.
    """

    def __init__(
        self,
        db: Database,
        key: bytes,
        *,
        old_key: bytes | None = None,
        cache_seconds: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._cipher = SecretCipher(key, old_key=old_key)
        self._ttl = cache_seconds
        self._now = monotonic
        self._cache: dict[tuple[str, str, str], tuple[float, str | None]] = {}

    def _invalidate(self, org_id: str, scope: str) -> None:
        for k in [k for k in self._cache if k[0] == org_id and k[1] == scope]:
            del self._cache[k]

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        """The decrypted value, or None. Raises ``SecretDecryptError`` / ``StorageUnavailable``."""
        cache_key = (org_id, scope, key)
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > self._now():
            return hit[1]
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["secret_get"], {"org": org_id, "scope": scope, "key": key})
            row = await cur.fetchone()
        value = None if row is None else self._cipher.open(row["encrypted_value"], scoped_secret_aad(*cache_key))
        if self._ttl > 0:
            self._cache[cache_key] = (self._now() + self._ttl, value)
        return value

    async def get_scope(self, org_id: str, scope: str) -> dict[str, str]:
        """Every secret of a scope, decrypted (the empty-scope sentinel excluded)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                _SQL["scope_secrets"], {"org": org_id, "scope": scope, "sentinel": EMPTY_SCOPE_SENTINEL}
            )
            rows = await cur.fetchall()
        return {
            r["key"]: self._cipher.open(r["encrypted_value"], scoped_secret_aad(org_id, scope, r["key"])) for r in rows
        }

    async def list_keys(self, org_id: str, scope: str) -> list[str]:
        """Names of the secrets in a scope, sorted (values are not decrypted)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                _SQL["scope_keys"], {"org": org_id, "scope": scope, "sentinel": EMPTY_SCOPE_SENTINEL}
            )
            return [r["key"] for r in await cur.fetchall()]

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        """Create or replace one secret (upsert on ``(org_id, scope, key)``)."""
        sealed = self._cipher.seal(value, scoped_secret_aad(org_id, scope, key))
        self._invalidate(org_id, scope)
        async with self._db.transaction() as conn:
            await conn.execute(_SQL["secret_put"], {"org": org_id, "scope": scope, "key": key, "value": sealed})
            await _audit(conn, "setSecret", scope, [key], {"orgId": org_id})
        self._invalidate(org_id, scope)

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        """Delete one key, or the whole scope when ``key`` is None; returns rows removed."""
        self._invalidate(org_id, scope)
        async with self._db.transaction() as conn:
            if key is None:
                cur = await conn.execute(_SQL["scope_delete"], {"org": org_id, "scope": scope})
            else:
                cur = await conn.execute(_SQL["secret_delete"], {"org": org_id, "scope": scope, "key": key})
            removed = [r["key"] for r in await cur.fetchall()]
            if removed:
                await _audit(conn, "deleteSecret", scope, removed, {"orgId": org_id})
        self._invalidate(org_id, scope)
        return len(removed)


async def _audit(conn: Connection, action: str, context: str, keys: list[str], metadata: dict[str, object]) -> None:
    await conn.execute(_SQL["audit"], {"action": action, "context": context, "keys": keys, "metadata": Jsonb(metadata)})


async def rotate_key(db: Database, old_key: bytes | None, new_key: bytes) -> int:
    """Re-encrypt every ``scoped_secrets`` row under ``new_key``, in one transaction; returns the count.

    Each row is opened with ``new_key`` first, then ``old_key`` (so an interrupted rotation can simply be
    run again), and written back with the same AAD at version ``MAX(key_version) + 1``. If any row opens
    with neither key, nothing is changed and ``SecretDecryptError`` is raised. ``old_key=None``
    re-encrypts under the same key at a new version.
    """
    cipher = SecretCipher(new_key, old_key=old_key)
    async with db.transaction() as conn:
        cur = await conn.execute(_SQL["secrets_lock_all"])
        rows = await cur.fetchall()
        cur = await conn.execute(_SQL["next_key_version"])
        version_row = await cur.fetchone()
        version = int(version_row["v"]) if version_row else 1
        for row in rows:
            aad = scoped_secret_aad(row["org_id"], row["scope"], row["key"])
            resealed = cipher.seal(cipher.open(row["encrypted_value"], aad), aad)
            await conn.execute(_SQL["secret_reseal"], {"value": resealed, "version": version, "id": row["id"]})
        await _audit(conn, "rotateKey", "*", [], {"reEncrypted": len(rows)})
    return len(rows)
