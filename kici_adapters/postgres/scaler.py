"""``PgScalerStore``: the auto-scaler's state in PostgreSQL (``scaler_agents``) and what it reads to plan.

Every read the scaler plans from is here: pending jobs, connected agents it did not start with their free
slots, its live containers with their phase (all three in one snapshot, :meth:`PgScalerStore.snapshot`), and
jobs whose last spawn failed. A pass runs under :meth:`PgScalerStore.singleton`, a session advisory
lock, so one process at a time spawns and removes; the partial unique index on ``bound_job_id`` makes a
second live container for one job impossible anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kici_adapters.postgres import queries, singletons
from kici_adapters.postgres.pool import Database
from kici_core.jsontypes import JSONObject

_SQL = queries.load("scaler.sql")

__all__ = ["FailedSpawn", "LiveContainer", "PendingRow", "PgScalerStore", "StaticAgentRow"]

SCALER_LOCK = singletons.lock_key("scaler")
"""pg_try_advisory_lock key of the scaler pass."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingRow:
    """A pending dispatch row with its matchers and the reason last written for it."""

    job_id: str
    run_id: str
    created_at: float
    runs_on: list[JSONObject]
    exclude_labels: list[JSONObject]
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticAgentRow:
    """A connected agent the scaler did not start."""

    agent_id: str
    labels: tuple[str, ...]
    mandatory_labels: tuple[str, ...]
    free_slots: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveContainer:
    """A ``starting``/``running`` row and its agent's state."""

    agent_id: str
    scaler: str
    label_set: int
    labels: tuple[str, ...]
    bound_job_id: str | None
    container_id: str | None
    container_ip: str | None
    token_id: str | None
    state: str
    created_at: float
    registered: bool
    connected: bool
    busy: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedSpawn:
    """The last failed spawn for a job."""

    job_id: str
    error: str
    at: float


def _ts(value: datetime) -> float:
    return value.timestamp()


def _pending(r: Mapping[str, Any]) -> PendingRow:
    return PendingRow(
        job_id=str(r["id"]),
        run_id=str(r["run_id"]),
        created_at=_ts(r["created_at"]),
        runs_on=list(r["runs_on"] or []),
        exclude_labels=list(r["exclude_labels"] or []),
        reason=r["last_provisioning_error"],
    )


def _agent(r: Mapping[str, Any]) -> StaticAgentRow:
    return StaticAgentRow(
        agent_id=r["agent_id"],
        labels=tuple(r["labels"] or ()),
        mandatory_labels=tuple(r["mandatory_labels"] or ()),
        free_slots=max(0, int(r["max_concurrency"]) - int(r["active"])),
    )


def _live(row: Mapping[str, Any]) -> LiveContainer:
    return LiveContainer(
        agent_id=row["agent_id"],
        scaler=row["scaler_name"],
        label_set=int(row["label_set"]),
        labels=tuple(row["labels"] or ()),
        bound_job_id=str(row["bound_job_id"]) if row["bound_job_id"] else None,
        container_id=row["container_id"],
        container_ip=row["container_ip"],
        token_id=str(row["token_id"]) if row["token_id"] else None,
        state=row["state"],
        created_at=_ts(row["created_at"]),
        registered=bool(row["registered"]),
        connected=bool(row["connected"]),
        busy=bool(row["busy"]),
    )


class PgScalerStore:
    """The scaler's reads and writes. Raises ``StorageUnavailable`` when the database is down."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def singleton(self) -> AsyncIterator[bool]:
        """Hold the scaler's advisory lock for the block if no other process has it; yields whether taken."""
        async with singletons.try_lock(self._db, SCALER_LOCK) as taken:
            yield taken

    # ------------------------------------------------------------------------------------ planning reads
    async def snapshot(self, limit: int = 10_000) -> tuple[list[PendingRow], list[StaticAgentRow], list[LiveContainer]]:
        """Pending rows, other agents and live containers as of one moment (one repeatable-read transaction):
        a job dispatched while the reads run is never both pending and held by a busy agent."""
        async with self._db.transaction() as conn:
            await conn.execute(queries.q("read_only_snapshot"))
            cur = await conn.execute(_SQL["scaler_pending_jobs"], {"limit": limit})
            pending = [_pending(r) for r in await cur.fetchall()]
            cur = await conn.execute(_SQL["static_agents"])
            agents = [_agent(r) for r in await cur.fetchall()]
            cur = await conn.execute(_SQL["live_containers"])
            live = [_live(r) for r in await cur.fetchall()]
        return pending, agents, live

    async def pending(self, limit: int = 10_000) -> list[PendingRow]:
        """Pending dispatch rows, queue order."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["scaler_pending_jobs"], {"limit": limit})
            return [_pending(r) for r in await cur.fetchall()]

    async def live(self) -> list[LiveContainer]:
        """Every ``starting``/``running`` container with its agent's state."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["live_containers"])
            return [_live(r) for r in await cur.fetchall()]

    async def recent_failures(self, job_ids: Sequence[str], within_s: float) -> dict[str, FailedSpawn]:
        """The last failed spawn of each of ``job_ids`` that ended less than ``within_s`` ago."""
        if not job_ids:
            return {}
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["recent_spawn_failures"], {"ids": list(job_ids), "secs": within_s})
            return {
                str(r["bound_job_id"]): FailedSpawn(
                    job_id=str(r["bound_job_id"]), error=r["error"] or "", at=_ts(r["ended_at"])
                )
                for r in await cur.fetchall()
            }

    async def binding(self, agent_id: str) -> tuple[bool, str | None]:
        """``(started by the scaler and live, bound job id)``."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["scaler_agent_binding"], {"a": agent_id})
            row = await cur.fetchone()
        if row is None:
            return False, None
        return True, str(row["bound_job_id"]) if row["bound_job_id"] else None

    # ------------------------------------------------------------------------------------ writes
    async def claim(
        self,
        *,
        agent_id: str,
        scaler: str,
        label_set: int,
        labels: Sequence[str],
        job_id: str | None,
        run_id: str | None,
        instance_id: str,
    ) -> bool:
        """Record a container about to be created; False when the job already has a live container."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                _SQL["scaler_agent_claim"],
                {
                    "agent_id": agent_id,
                    "scaler": scaler,
                    "label_set": label_set,
                    "labels": list(labels),
                    "job_id": job_id,
                    "run_id": run_id,
                    "instance": instance_id,
                },
            )
            return await cur.fetchone() is not None

    async def update(self, agent_id: str, **fields: Any) -> None:
        """Set columns of a row (``container_id``, ``container_ip``, ``token_id``, ``state``...)."""
        allowed = {"container_id", "container_ip", "token_id", "state", "error"}
        assert fields and set(fields) <= allowed, fields
        params: dict[str, Any] = {"agent_id": agent_id}
        for name in sorted(allowed):  # a column not given keeps its value
            params[f"set_{name}"] = name in fields
            params[name] = fields.get(name)
        async with self._db.connection() as conn:
            await conn.execute(_SQL["scaler_agent_update"], params)

    async def set_reasons(self, reasons: Mapping[str, str | None]) -> None:
        """Write each pending job's waiting reason (``None`` clears it) where it changed."""
        if not reasons:
            return
        async with self._db.connection() as conn:
            await conn.execute(_SQL["jobs_waiting_reasons"], {"ids": list(reasons), "reasons": list(reasons.values())})
