"""Decision 4: webhook secrets are stored encrypted. Register sources with secrets, accept and process deliveries,
then read every row of every table and every stored object: no plaintext secret appears anywhere."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import sql

from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.offload import PayloadOffloader
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.secrets import PgSecretStore
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.postgres.tokens import PgTokenStore
from kici_adapters.storage import FilesystemBlobStore
from kici_core.delivery_records import Delivery, DeliveryOutcome
from kici_core.source_records import GenericSource, GitHubSource
from kici_core.token_records import AdminToken

pytestmark = pytest.mark.anyio


async def dump_database(db: Database) -> list[str]:
    """Every row of every table in the public schema, as JSON text."""
    async with db.connection() as conn:
        cur = await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        tables = [r["tablename"] for r in await cur.fetchall()]
        out: list[str] = []
        for table in tables:
            cur = await conn.execute(
                sql.SQL("SELECT row_to_json(t)::text AS j FROM {} t").format(sql.Identifier(table))
            )
            out.extend(r["j"] for r in await cur.fetchall())
    assert "scoped_secrets" in tables and "event_log" in tables
    return out


def dump_objects(root: Path) -> list[bytes]:
    """Every stored object, un-gzipped where it is gzip."""
    out: list[bytes] = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            out.append(gzip.decompress(data) if path.suffix == ".gz" else data)
    return out


async def test_secrets_never_stored_in_plaintext(database: Database, tmp_path: Path) -> None:
    secrets = PgSecretStore(database, os.urandom(32))
    sources = PgSourceStore(database)
    blobs = FilesystemBlobStore(tmp_path / "objects")
    inbox = PgDeliveryInbox(database, blobs)
    tokens = PgTokenStore(database)

    plaintexts = {
        "webhook": "whsec-" + uuid.uuid4().hex,
        "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE" + uuid.uuid4().hex + "\n-----END RSA PRIVATE KEY-----",
        "generic": "gen-" + uuid.uuid4().hex,
        "admin_token": uuid.uuid4().hex + uuid.uuid4().hex,
    }

    gh = await sources.add_github(GitHubSource(id=str(uuid.uuid4()), routing_key="github:77", name="app", app_id="77"))
    await secrets.put("__system__", f"__source__/{gh.id}", "webhookSecret", plaintexts["webhook"])
    await secrets.put("__system__", f"__source__/{gh.id}", "privateKey", plaintexts["private_key"])
    gid = str(uuid.uuid4())
    await sources.add_generic(
        GenericSource(
            id=gid,
            org_id="acme",
            name="deploys",
            routing_key=f"generic:acme:{gid}",
            verification_config={"header": "X-Signature"},
        )
    )
    await secrets.put("__system__", f"__webhook__/{gid}", "secret", plaintexts["generic"])
    await tokens.create_admin_token(
        AdminToken(id=str(uuid.uuid4()), label="ops", role="owner"),
        hashlib.sha256(plaintexts["admin_token"].encode()).hexdigest(),
    )

    # the stores can read the secrets back: they are there, just not in the clear
    assert await secrets.get("__system__", f"__source__/{gh.id}", "webhookSecret") == plaintexts["webhook"]

    for n, key in enumerate(["github:77", f"generic:acme:{gid}"]):
        body = json.dumps({"ref": "refs/heads/main", "n": n}).encode()
        await inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id=f"d-{n}",
                routing_key=key,
                event="push",
                action=None,
                source="direct",
                provider="github",
                body=body,
                received_at=datetime.now(UTC),
            )
        )
    for item in await inbox.claim(worker_id="w", limit=10, lease_seconds=60):
        await inbox.complete(item, DeliveryOutcome(status="received"), [])

    rows = await dump_database(database)  # accepted bodies are still in delivery_payloads (gzipped bytea)
    await PayloadOffloader(database, blobs).run_once()  # ... and now in object storage
    objects = dump_objects(tmp_path / "objects")
    assert len(objects) == 2
    assert sum('"encrypted_value"' in r for r in rows) == 3  # the secrets rows were dumped too
    for name, secret in plaintexts.items():
        for row in rows:
            assert secret not in row, f"{name} found in a database row"
            # JSON escapes the PEM's newlines; look for its distinctive middle too
            assert secret.splitlines()[len(secret.splitlines()) // 2] not in row, f"{name} found in a database row"
        for data in objects:
            assert secret.encode() not in data, f"{name} found in a stored object"
