"""What the web dashboard needs from PostgreSQL besides the admin API's stores: its sign-in sessions and a
view of the connected agents and the dispatch queue.

:class:`PgDashboardSessions` keeps sessions in ``dashboard_sessions`` (migration 0008), stored by the sha256
of the session id only. A session is valid while its row exists, it has not expired, and its admin token is
neither revoked nor expired: revoking the token ends every session made with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.tokens import check_hash, row_to_admin_token
from kici_core.jsontypes import JSONObject
from kici_core.token_records import AdminToken

_SQL = queries.load("dashboard.sql")

__all__ = ["DashboardSession", "PgDashboardReads", "PgDashboardSessions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardSession:
    """A signed-in browser: the admin token it acts as and the CSRF token its forms must carry."""

    token: AdminToken
    csrf_token: str
    expires_at: datetime


class PgDashboardSessions:
    """Dashboard sessions over PostgreSQL. Raises ``StorageUnavailable`` when the database is down."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, session_hash: str, *, token_id: str, csrf_token: str, expires_at: datetime, now: datetime
    ) -> None:
        """Store a new session (and drop the expired ones)."""
        async with self._db.transaction() as conn:
            await conn.execute(_SQL["session_purge"], {"now": now})
            await conn.execute(
                _SQL["session_insert"],
                {"hash": check_hash(session_hash), "token_id": token_id, "csrf": csrf_token, "expires_at": expires_at},
            )

    async def lookup(self, session_hash: str, *, now: datetime) -> DashboardSession | None:
        """The live session with this hash, or None (unknown, expired, signed out, or its token revoked)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["session_lookup"], {"hash": session_hash, "now": now})
            row = await cur.fetchone()
        if row is None:
            return None
        return DashboardSession(
            token=row_to_admin_token(row), csrf_token=row["csrf_token"], expires_at=row["session_expires_at"]
        )

    async def delete(self, session_hash: str) -> bool:
        """Sign out: remove the session; False when there was none."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["session_delete"], {"hash": session_hash})
            return cur.rowcount > 0


class PgDashboardReads:
    """Read-only views for the dashboard's agents and queue page."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def agents(
        self,
        *,
        local: Sequence[str] = (),
        instance: str = "",
        routing_key: str | None = None,
    ) -> list[dict[str, Any]]:
        """Connected agents (on any process) with their slot use (``busy`` of ``max_concurrency``). ``local``
        names the agents connected to this process (``instance``), which count as connected whatever their
        row says. With ``routing_key``, only the agents running a job of that key."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["agents"], {"rk": routing_key, "local": list(local)})
            rows = [dict(r) for r in await cur.fetchall()]
        for row in rows:
            if row["agent_id"] in local:
                row["connected_instance"] = instance
        return rows

    async def queued(self, *, routing_key: str | None = None, limit: int = 200) -> tuple[list[dict[str, Any]], int]:
        """Jobs waiting in the dispatch queue, first in line first, and how many wait in all."""
        params: JSONObject = {"rk": routing_key, "limit": limit}
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["queued"], params)
            rows = [dict(r) for r in await cur.fetchall()]
            cur = await conn.execute(_SQL["queued_count"], params)
            total = await cur.fetchone()
        return rows, int(total["n"]) if total else 0
