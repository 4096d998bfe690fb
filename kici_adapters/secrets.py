"""Secrets at rest: AES-256-GCM with the master key ``KICI_SECRET_KEY``, and the PostgreSQL secret store.

Stored format (identical to upstream, so either can read the other's database)::

    base64( nonce[12] || tag[16] || ciphertext )      standard alphabet, padded

The plaintext is UTF-8 text. The additional authenticated data binds a value to where it lives; for a
``scoped_secrets`` row it is ``"<org_id>:<scope>:<key>"``, so a value copied to another row fails to
decrypt. The master key is used directly (no KDF): 64 hex characters, or base64 of exactly 32 bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg.types.json import Jsonb

from kici_adapters.postgres.pool import Connection, Database
from kici_core.errors import ConfigError, SecretDecryptError

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
EMPTY_SCOPE_SENTINEL = "__empty__"
"""Key of the placeholder row upstream writes for an empty scope; never returned as a secret."""

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_KEY_HINT = "Provide a 64-character hex string or a base64-encoded 32-byte value."
_log = logging.getLogger("kici.secrets")


# ------------------------------------------------------------------------------------------- master key
def decode_master_key(text: str) -> bytes:
    """Decode a master key: 64 hex characters, else base64; the result must be 32 bytes.

    Raises:
        ValueError: a message meant to follow the variable's name; it never contains the key.
    """
    text = text.strip()
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"is neither 64 hex characters nor valid base64. {_KEY_HINT}") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"Encryption key must be exactly {KEY_BYTES} bytes, got {len(raw)} bytes. {_KEY_HINT}")
    return raw


def parse_master_key(value: str, *, name: str = "KICI_SECRET_KEY") -> bytes:
    """Decode a master key (see :func:`decode_master_key`), naming the variable on failure.

    Raises:
        ConfigError: ``"<name> is malformed: ..."``, never echoing the value.
    """
    try:
        return decode_master_key(value)
    except ValueError as exc:
        raise ConfigError(f"{name} is malformed: {exc}") from None


# ------------------------------------------------------------------------------------------- cipher
def scoped_secret_aad(org_id: str, scope: str, key: str) -> str:
    """AAD of a ``scoped_secrets`` row."""
    return f"{org_id}:{scope}:{key}"


def seal(key: bytes, plaintext: str, aad: str) -> str:
    """Encrypt ``plaintext`` under ``key`` bound to ``aad``; returns the stored text."""
    nonce = os.urandom(NONCE_BYTES)
    ct_and_tag = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
    ciphertext, tag = ct_and_tag[:-TAG_BYTES], ct_and_tag[-TAG_BYTES:]
    return base64.b64encode(nonce + tag + ciphertext).decode("ascii")


def unseal(key: bytes, stored: str, aad: str) -> str:
    """Decrypt stored text. Raises ``SecretDecryptError`` for a wrong key, wrong AAD or damaged value."""
    try:
        blob = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        raise SecretDecryptError() from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise SecretDecryptError()
    nonce, tag, ciphertext = blob[:NONCE_BYTES], blob[NONCE_BYTES:NONCE_BYTES + TAG_BYTES], blob[NONCE_BYTES + TAG_BYTES:]
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext + tag, aad.encode("utf-8"))
        return plain.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise SecretDecryptError() from None


class SecretCipher:
    """Seals with the current key; opens with the current key, then the previous one during rotation."""

    def __init__(self, key: bytes, *, old_key: bytes | None = None) -> None:
        for k in (key, old_key):
            if k is not None and len(k) != KEY_BYTES:
                raise ConfigError("KICI_SECRET_KEY must decode to exactly 32 bytes")
        self._key = key
        self._old = old_key

    def seal(self, plaintext: str, aad: str) -> str:
        """Encrypt with the current key."""
        return seal(self._key, plaintext, aad)

    def open(self, stored: str, aad: str) -> str:
        """Decrypt with the current key, falling back to the old one. Raises ``SecretDecryptError``."""
        try:
            return unseal(self._key, stored, aad)
        except SecretDecryptError:
            if self._old is None:
                _log.error("Failed to decrypt secret with current key (AAD: %s)", aad)
                raise
        try:
            return unseal(self._old, stored, aad)
        except SecretDecryptError:
            _log.error("Failed to decrypt secret with both current and old key (AAD: %s)", aad)
            raise


# ------------------------------------------------------------------------------------------- store
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
            cur = await conn.execute(
                "SELECT encrypted_value FROM scoped_secrets WHERE org_id = %s AND scope = %s AND key = %s",
                (org_id, scope, key),
            )
            row = await cur.fetchone()
        value = None if row is None else self._cipher.open(row["encrypted_value"], scoped_secret_aad(*cache_key))
        if self._ttl > 0:
            self._cache[cache_key] = (self._now() + self._ttl, value)
        return value

    async def get_scope(self, org_id: str, scope: str) -> dict[str, str]:
        """Every secret of a scope, decrypted (the empty-scope sentinel excluded)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                "SELECT key, encrypted_value FROM scoped_secrets WHERE org_id = %s AND scope = %s AND key <> %s"
                " ORDER BY key",
                (org_id, scope, EMPTY_SCOPE_SENTINEL),
            )
            rows = await cur.fetchall()
        return {r["key"]: self._cipher.open(r["encrypted_value"], scoped_secret_aad(org_id, scope, r["key"])) for r in rows}

    async def list_keys(self, org_id: str, scope: str) -> list[str]:
        """Names of the secrets in a scope, sorted (values are not decrypted)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                "SELECT key FROM scoped_secrets WHERE org_id = %s AND scope = %s AND key <> %s ORDER BY key",
                (org_id, scope, EMPTY_SCOPE_SENTINEL),
            )
            return [r["key"] for r in await cur.fetchall()]

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        """Create or replace one secret (upsert on ``(org_id, scope, key)``)."""
        sealed = self._cipher.seal(value, scoped_secret_aad(org_id, scope, key))
        self._invalidate(org_id, scope)
        async with self._db.transaction() as conn:
            await conn.execute(
                """
                INSERT INTO scoped_secrets (org_id, scope, key, encrypted_value, key_version)
                VALUES (%(org)s, %(scope)s, %(key)s, %(value)s,
                        (SELECT COALESCE(MAX(key_version), 1) FROM scoped_secrets))
                ON CONFLICT (org_id, scope, key) DO UPDATE
                   SET encrypted_value = EXCLUDED.encrypted_value,
                       key_version = EXCLUDED.key_version,
                       updated_at = now()
                """,
                {"org": org_id, "scope": scope, "key": key, "value": sealed},
            )
            await _audit(conn, "setSecret", scope, [key], {"orgId": org_id})
        self._invalidate(org_id, scope)

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        """Delete one key, or the whole scope when ``key`` is None; returns rows removed."""
        self._invalidate(org_id, scope)
        async with self._db.transaction() as conn:
            if key is None:
                cur = await conn.execute(
                    "DELETE FROM scoped_secrets WHERE org_id = %s AND scope = %s RETURNING key", (org_id, scope)
                )
            else:
                cur = await conn.execute(
                    "DELETE FROM scoped_secrets WHERE org_id = %s AND scope = %s AND key = %s RETURNING key",
                    (org_id, scope, key),
                )
            removed = [r["key"] for r in await cur.fetchall()]
            if removed:
                await _audit(conn, "deleteSecret", scope, removed, {"orgId": org_id})
        self._invalidate(org_id, scope)
        return len(removed)


async def _audit(conn: Connection, action: str, context: str, keys: list[str], metadata: dict[str, object]) -> None:
    await conn.execute(
        "INSERT INTO secret_audit_log (action, context_name, secret_keys, outcome, metadata)"
        " VALUES (%s, %s, %s, 'success', %s)",
        (action, context, keys, Jsonb(metadata)),
    )


async def rotate_key(db: Database, old_key: bytes | None, new_key: bytes) -> int:
    """Re-encrypt every ``scoped_secrets`` row under ``new_key``, in one transaction; returns the count.

    Each row is opened with ``new_key`` first, then ``old_key`` (so an interrupted rotation can simply be
    run again), and written back with the same AAD at version ``MAX(key_version) + 1``. If any row opens
    with neither key, nothing is changed and ``SecretDecryptError`` is raised. ``old_key=None``
    re-encrypts under the same key at a new version.
    """
    cipher = SecretCipher(new_key, old_key=old_key)
    async with db.transaction() as conn:
        cur = await conn.execute(
            "SELECT id, org_id, scope, key, encrypted_value FROM scoped_secrets ORDER BY id FOR UPDATE"
        )
        rows = await cur.fetchall()
        cur = await conn.execute("SELECT COALESCE(MAX(key_version), 0) + 1 AS v FROM scoped_secrets")
        version_row = await cur.fetchone()
        version = int(version_row["v"]) if version_row else 1
        for row in rows:
            aad = scoped_secret_aad(row["org_id"], row["scope"], row["key"])
            resealed = cipher.seal(cipher.open(row["encrypted_value"], aad), aad)
            await conn.execute(
                "UPDATE scoped_secrets SET encrypted_value = %s, key_version = %s, updated_at = now() WHERE id = %s",
                (resealed, version, row["id"]),
            )
        await _audit(conn, "rotateKey", "*", [], {"reEncrypted": len(rows)})
    return len(rows)
