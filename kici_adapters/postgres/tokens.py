"""``PgTokenStore``: admin and agent tokens, stored only as lower-case hex sha256 digests of the token text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, cast

import psycopg.errors
from psycopg.types.json import Jsonb

from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.queries import q
from kici_adapters.postgres.sources import is_uuid
from kici_core import errors
from kici_core.token_records import AdminRole, AdminToken, AgentToken

_CONFLICT = "Conflict: resource already exists"
_HASH = re.compile(r"^[0-9a-f]{64}$")


def check_hash(token_hash: str) -> str:
    """``token_hash`` when it is a lower-case hex sha256 digest; raises ``InvalidInput`` otherwise, so token
    text can never be stored by mistake (the error does not echo the value)."""
    if not _HASH.match(token_hash):
        raise errors.InvalidInput("token hash must be a lower-case hex sha256 digest")
    return token_hash


def row_to_admin_token(row: Mapping[str, Any]) -> AdminToken:
    """An ``admin_tokens`` row as a domain record (the hash stays in the database)."""
    return AdminToken(
        id=str(row["id"]),
        label=row["label"],
        role=cast(AdminRole, row["role"]),
        routing_key=row["routing_key"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked=bool(row["revoked"]),
    )


def row_to_agent_token(row: Mapping[str, Any]) -> AgentToken:
    """An ``agent_tokens`` row as a domain record (NULL label lists read as empty)."""
    return AgentToken(
        id=str(row["id"]),
        token_prefix=row["token_prefix"],
        labels=tuple(str(x) for x in row["labels"] or ()),
        mandatory_labels=tuple(str(x) for x in row["mandatory_labels"] or ()),
        agent_type=cast(Literal["static", "ephemeral"], row["agent_type"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        last_seen_at=row["last_seen_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


class PgTokenStore:
    """The ``TokenStore`` port over PostgreSQL. Raises ``StorageUnavailable`` when the database is down."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_admin_token(self, token: AdminToken, token_hash: str) -> AdminToken:
        """Insert; raises ``Conflict`` on a duplicate hash or id."""
        params = {
            "id": token.id,
            "token_hash": check_hash(token_hash),
            "label": token.label,
            "role": token.role,
            "routing_key": token.routing_key,
            "created_at": token.created_at,
            "expires_at": token.expires_at,
            "last_used_at": token.last_used_at,
            "revoked": token.revoked,
        }
        async with self._db.connection() as conn:
            try:
                cur = await conn.execute(q("admin_token_insert"), params)
            except psycopg.errors.UniqueViolation:
                raise errors.Conflict(_CONFLICT) from None
            row = await cur.fetchone()
        assert row is not None
        return row_to_admin_token(row)

    async def ensure_bootstrap_admin_token(self, token_hash: str, new_id: str) -> bool:
        """Make this hash the ``bootstrap`` owner token (unscoped, no expiry): a new value replaces the hash of the
        active bootstrap token, or is inserted with ``new_id`` when there is none. Returns False, changing
        nothing, when this value was revoked: revocation sticks across restarts. Concurrent callers are
        serialised by a transaction advisory lock.

        Raises:
            Conflict: a token that is not the bootstrap token has this hash.
        """
        async with self._db.transaction() as conn:
            await conn.execute(q("admin_token_bootstrap_lock"))
            cur = await conn.execute(q("admin_token_by_hash_any"), {"token_hash": check_hash(token_hash)})
            same = await cur.fetchone()
            if same is not None:
                if same["label"] != "bootstrap":
                    raise errors.Conflict(_CONFLICT)
                if same["revoked"]:
                    return False
                await conn.execute(q("admin_token_bootstrap_refresh"), {"id": same["id"]})
                return True
            cur = await conn.execute(q("admin_token_bootstrap_update"), {"token_hash": token_hash})
            if await cur.fetchone() is None:
                await conn.execute(q("admin_token_bootstrap_insert"), {"id": new_id, "token_hash": token_hash})
            return True

    async def has_active_admin_token(self) -> bool:
        """True when any admin token is not revoked."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("admin_token_any_active"))
            row = await cur.fetchone()
        return bool(row and row["active"])

    async def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        """The usable token with this hash, recording ``last_used_at``; None when unknown, revoked or expired."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("admin_token_use"), {"token_hash": token_hash})
            row = await cur.fetchone()
        return None if row is None else row_to_admin_token(row)

    async def list_admin_tokens(self) -> list[AdminToken]:
        """Every admin token (revoked ones included), oldest first."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("admin_token_list"))
            return [row_to_admin_token(r) for r in await cur.fetchall()]

    async def revoke_admin_token(self, token_id: str) -> bool:
        """Revoke; False when unknown or already revoked."""
        if not is_uuid(token_id):
            return False
        async with self._db.connection() as conn:
            cur = await conn.execute(q("admin_token_revoke"), {"id": token_id})
            return await cur.fetchone() is not None

    async def create_agent_token(self, token: AgentToken, token_hash: str) -> AgentToken:
        """Insert; raises ``Conflict`` on a duplicate hash or id."""
        params = {
            "id": token.id,
            "token_hash": check_hash(token_hash),
            "token_prefix": token.token_prefix,
            "labels": Jsonb(list(token.labels)),
            "mandatory_labels": Jsonb(list(token.mandatory_labels)),
            "agent_type": token.agent_type,
            "created_by": token.created_by,
            "created_at": token.created_at,
            "last_seen_at": token.last_seen_at,
            "expires_at": token.expires_at,
            "revoked_at": token.revoked_at,
        }
        async with self._db.connection() as conn:
            try:
                cur = await conn.execute(q("agent_token_insert"), params)
            except psycopg.errors.UniqueViolation:
                raise errors.Conflict(_CONFLICT) from None
            row = await cur.fetchone()
        assert row is not None
        return row_to_agent_token(row)

    async def agent_token_by_hash(self, token_hash: str) -> AgentToken | None:
        """The usable agent token with this hash, touching ``last_seen_at``; None when unknown/revoked/expired."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("agent_token_use"), {"token_hash": token_hash})
            row = await cur.fetchone()
        return None if row is None else row_to_agent_token(row)

    async def list_agent_tokens(self) -> list[AgentToken]:
        """Non-revoked agent tokens, oldest first."""
        async with self._db.connection() as conn:
            cur = await conn.execute(q("agent_token_list"))
            return [row_to_agent_token(r) for r in await cur.fetchall()]

    async def revoke_agent_token(self, token_id: str) -> bool:
        """Revoke; False when unknown or already revoked."""
        if not is_uuid(token_id):
            return False
        async with self._db.connection() as conn:
            cur = await conn.execute(q("agent_token_revoke"), {"id": token_id})
            return await cur.fetchone() is not None
