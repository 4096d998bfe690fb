"""PgSecretStore and key rotation against a real database."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kici_adapters.postgres import secrets as pg_secrets
from kici_adapters.postgres.pool import Database
from kici_core.errors import SecretDecryptError

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))
NEW_KEY = bytes(range(32, 64))
OTHER = b"\xee" * 32


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _stored(database: Database, org: str, scope: str, key: str) -> dict[str, Any]:
    async with database.connection() as conn:
        cur = await conn.execute(
            "SELECT encrypted_value, key_version FROM scoped_secrets WHERE org_id = %s AND scope = %s AND key = %s",
            (org, scope, key),
        )
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def test_put_get_list_delete(database: Database) -> None:
    store = pg_secrets.PgSecretStore(database, KEY)
    assert await store.get("__system__", "__source__/a", "webhookSecret") is None
    await store.put("__system__", "__source__/a", "webhookSecret", "s3cr3t")
    await store.put("__system__", "__source__/a", "privateKey", "-----BEGIN-----")
    assert await store.get("__system__", "__source__/a", "webhookSecret") == "s3cr3t"
    assert await store.list_keys("__system__", "__source__/a") == ["privateKey", "webhookSecret"]
    assert await store.get_scope("__system__", "__source__/a") == {
        "privateKey": "-----BEGIN-----",
        "webhookSecret": "s3cr3t",
    }
    row = await _stored(database, "__system__", "__source__/a", "webhookSecret")
    assert "s3cr3t" not in row["encrypted_value"]
    assert await store.delete("__system__", "__source__/a", "webhookSecret") == 1
    assert await store.get("__system__", "__source__/a", "webhookSecret") is None
    assert await store.delete("__system__", "__source__/a") == 1
    assert await store.list_keys("__system__", "__source__/a") == []
    async with database.connection() as conn:
        cur = await conn.execute("SELECT action, secret_keys FROM secret_audit_log ORDER BY id")
        actions = [(r["action"], r["secret_keys"]) for r in await cur.fetchall()]
    assert actions == [
        ("setSecret", ["webhookSecret"]),
        ("setSecret", ["privateKey"]),
        ("deleteSecret", ["webhookSecret"]),
        ("deleteSecret", ["privateKey"]),
    ]


async def test_reads_a_row_written_in_upstream_format(database: Database) -> None:
    aad = "__system__:__webhook__/g1:secret"
    nonce = b"\x01" * 12
    ct_tag = AESGCM(KEY).encrypt(nonce, b"from-upstream", aad.encode())
    stored = base64.b64encode(nonce + ct_tag[-16:] + ct_tag[:-16]).decode()
    async with database.transaction() as conn:
        await conn.execute(
            "INSERT INTO scoped_secrets (org_id, scope, key, encrypted_value) VALUES (%s, %s, %s, %s)",
            ("__system__", "__webhook__/g1", "secret", stored),
        )
    assert (
        await pg_secrets.PgSecretStore(database, KEY).get("__system__", "__webhook__/g1", "secret") == "from-upstream"
    )


async def test_cache_is_invalidated_by_writes_and_expires(database: Database) -> None:
    clock = FakeMonotonic()
    store = pg_secrets.PgSecretStore(database, KEY, cache_seconds=5.0, monotonic=clock)
    other = pg_secrets.PgSecretStore(database, KEY, cache_seconds=0)
    await store.put("o", "s", "k", "v1")
    assert await store.get("o", "s", "k") == "v1"
    await store.put("o", "s", "k", "v2")  # own write: seen at once
    assert await store.get("o", "s", "k") == "v2"
    await other.put("o", "s", "k", "v3")  # another writer: seen after the TTL
    assert await store.get("o", "s", "k") == "v2"
    clock.t += 6
    assert await store.get("o", "s", "k") == "v3"


async def test_wrong_key_raises_secret_decrypt_error(database: Database) -> None:
    await pg_secrets.PgSecretStore(database, KEY).put("o", "s", "k", "v")
    with pytest.raises(SecretDecryptError, match="does not match"):
        await pg_secrets.PgSecretStore(database, OTHER).get("o", "s", "k")


async def test_rotate_key_reencrypts_every_row(database: Database) -> None:
    store = pg_secrets.PgSecretStore(database, KEY, cache_seconds=0)
    for i in range(3):
        await store.put("o", f"scope{i}", "k", f"value{i}")
    before = await _stored(database, "o", "scope0", "k")
    assert await pg_secrets.rotate_key(database, KEY, NEW_KEY) == 3
    after = await _stored(database, "o", "scope0", "k")
    assert after["key_version"] == before["key_version"] + 1
    rotated = pg_secrets.PgSecretStore(database, NEW_KEY, cache_seconds=0)
    assert [await rotated.get("o", f"scope{i}", "k") for i in range(3)] == ["value0", "value1", "value2"]
    with pytest.raises(SecretDecryptError):
        await store.get("o", "scope0", "k")
    # During rotation a store with both keys reads either generation.
    both = pg_secrets.PgSecretStore(database, NEW_KEY, old_key=KEY, cache_seconds=0)
    assert await both.get("o", "scope1", "k") == "value1"
    # Running it again (new key already in place) is harmless.
    assert await pg_secrets.rotate_key(database, KEY, NEW_KEY) == 3


async def test_rotate_key_is_all_or_nothing(database: Database) -> None:
    await pg_secrets.PgSecretStore(database, KEY).put("o", "a", "k", "good")
    await pg_secrets.PgSecretStore(database, OTHER).put("o", "b", "k", "foreign")
    before = await _stored(database, "o", "a", "k")
    with pytest.raises(SecretDecryptError):
        await pg_secrets.rotate_key(database, KEY, NEW_KEY)
    assert await _stored(database, "o", "a", "k") == before
