"""The durable dispatch queue (``dispatch_queue``) and the ``agents`` table, for the runtime dispatcher.

Rows move only through guarded updates (``WHERE status = ...``), so two processes never both win: a claim is
``pending -> dispatched`` for one agent; a requeue ``dispatched -> pending``; recovery ``dispatched ->
recovering -> dispatched | failed``. Sweeps that must run in one process at a time use
:meth:`PgDispatchQueue.try_lock`.

The dispatcher's hot path (reading new pending rows, claiming and loading rows to dispatch, clearing ack
deadlines) runs on dedicated autocommit connections, one statement each: a claim and the load of everything
``job.dispatch`` needs is one round trip for a whole batch of assignments (:meth:`PgDispatchQueue.claim_many`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from kici_adapters.postgres import dispatch_notices, notify, queries, singletons
from kici_adapters.postgres.inbox import LaneConnections
from kici_adapters.postgres.pool import Connection, Database, translate_errors
from kici_core.dispatch_records import (
    ConnectedAgent,
    DispatchNotice,
    DispatchRow,
    Overdue,
    QueuedRow,
    RecoveringRow,
    UpstreamResult,
    upstream_outputs,
)
from kici_core.jsontypes import JSONObject

__all__ = ["DispatchRow", "PgDispatchQueue", "QueuedRow"]

_SQL = queries.load("dispatch.sql")


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _queued(row: dict[str, Any]) -> QueuedRow:
    return QueuedRow(
        job_id=str(row["id"]),
        run_id=str(row["run_id"]),
        created_at=row["created_at"].timestamp(),
        expires_at=_epoch(row["expires_at"]),
        attempts=int(row["dispatch_attempts"]),
        runs_on=tuple(row["runs_on"] or ()),
        exclude_labels=tuple(row["exclude_labels"] or ()),
        seq=int(row["seq"]),
    )


def _dispatch_row(
    row: Mapping[str, Any], ups: Sequence[Mapping[str, Any]], event: JSONObject | None = None
) -> DispatchRow:
    config = row["job_config"] if isinstance(row["job_config"], dict) else {}
    if event is None and isinstance(row.get("trigger_event"), dict):
        event = row["trigger_event"]
    return DispatchRow(
        job_id=str(row["id"]),
        run_id=str(row["run_id"]),
        workflow_name=row["workflow_name"],
        job_name=row["job_name"],
        base_name=row["base_name"],
        job_config=config,
        repo_url=row["repo_url"] or "",
        ref=row["ref"] or "",
        sha=row["sha"] or "",
        provider=row["provider"],
        routing_key=row["routing_key"] or row["run_routing_key"],
        repo_identifier=row["repo_identifier"],
        request_id=row["request_id"],
        upstream_outputs=_upstream_outputs(ups),
        upstream_statuses={str(u["upstream_name"]): str(u["status"]) for u in ups},
        event=event,
    )


def _upstream_outputs(rows: Sequence[Mapping[str, Any]]) -> JSONObject:
    return upstream_outputs(
        [
            UpstreamResult(
                upstream_name=str(r["upstream_name"]),
                base_name=r["base_name"],
                status=str(r["status"]),
                outputs=r["outputs"],
                matrix_values=r["matrix_values"],
            )
            for r in rows
        ]
    )


class PgDispatchQueue:
    """The ``dispatch_queue`` and ``agents`` tables (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._direct = LaneConnections(db.url)

    async def aclose(self) -> None:
        """Close the hot path's dedicated connections (the pool is the caller's)."""
        await self._direct.aclose()

    @asynccontextmanager
    async def _fast(self) -> AsyncIterator[Connection]:
        """A dedicated autocommit connection: one round trip per statement (no checkout check, no BEGIN)."""
        with translate_errors(self._db.url):
            async with self._direct.connection() as conn:
                yield conn

    # ------------------------------------------------------------------------------------ queue
    async def pending(self, *, ids: Sequence[str] | None = None, limit: int = 10_000) -> list[QueuedRow]:
        """Pending rows oldest first (all, or only ``ids``)."""
        async with self._fast() as conn:
            cur = await conn.execute(_SQL["pending"], {"ids": None if ids is None else list(ids), "limit": limit})
            return [_queued(r) for r in await cur.fetchall()]

    async def pending_positions(self, *, limit: int = 10_000) -> list[tuple[str, int]]:
        """``(job id, seq)`` of the pending rows, oldest first: a cheap full scan (no JSON columns) that
        :meth:`pending` then completes for the ids the caller does not know yet."""
        async with self._fast() as conn:
            cur = await conn.execute(_SQL["pending_positions"], {"limit": limit})
            return [(str(r["id"]), int(r["seq"])) for r in await cur.fetchall()]

    async def pending_since(self, after_seq: int, *, named: Sequence[str] = (), limit: int = 10_000) -> list[QueuedRow]:
        """Pending rows with ``seq > after_seq``, plus pending rows whose job id or run id is in ``named``
        (``NOTIFY kici_jobs`` payloads), oldest first."""
        uuids = [n for n in dict.fromkeys(named) if _is_uuid(n)]
        async with self._fast() as conn:
            cur = await conn.execute(_SQL["pending_since"], {"after": after_seq, "named": uuids, "limit": limit})
            return [_queued(r) for r in await cur.fetchall()]

    async def claim_many(self, claims: Sequence[tuple[str, str, float]]) -> dict[str, DispatchRow]:
        """Guarded ``pending -> dispatched`` for each ``(job_id, agent_id, ack_deadline)`` in one statement.
        Returns the rows won, by job id, loaded for ``job.dispatch``; a job missing from the result was no
        longer pending (another process took it, or it expired or was cancelled)."""
        if not claims:
            return {}
        params = {
            "ids": [c[0] for c in claims],
            "agents": [c[1] for c in claims],
            "deadlines": [_ts(c[2]) for c in claims],
        }
        async with self._fast() as conn:
            cur = await conn.execute(_SQL["claim_many"], params)
            rows = await cur.fetchall()
        events = {r["run_id"]: r["trigger_event"] for r in rows if isinstance(r["trigger_event"], dict)}
        return {str(r["id"]): _dispatch_row(r, r["upstreams"] or [], events.get(r["run_id"])) for r in rows}

    async def acks_resolved(self, acks: Sequence[tuple[str, str]]) -> None:
        """Clear the ack deadlines of ``(job_id, agent_id)`` rows still dispatched to that agent, in one
        statement."""
        if not acks:
            return
        async with self._fast() as conn:
            await conn.execute(_SQL["acks_resolved"], {"ids": [a[0] for a in acks], "agents": [a[1] for a in acks]})

    async def requeue(self, job_id: str, *, attempts: int) -> bool:
        """Guarded ``dispatched -> pending`` with the new attempt count; notifies dispatchers."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["requeue_row"], {"id": job_id, "n": attempts})
            ok = await cur.fetchone() is not None
            if ok:
                await conn.execute(_SQL["requeue_job"], {"id": job_id})
                await notify.notify(conn, notify.JOBS, job_id)
            return ok

    async def mark_recovering(self, job_id: str, *, agent_id: str, deadline: float) -> bool:
        """``dispatched -> recovering`` (and the job ``running -> recovering``)."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                _SQL["recovering_row"], {"id": job_id, "agent": agent_id, "deadline": _ts(deadline)}
            )
            ok = await cur.fetchone() is not None
            if ok:
                await conn.execute(_SQL["recovering_job"], {"id": job_id})
            return ok

    async def reclaim(self, job_id: str, *, agent_id: str) -> bool:
        """``recovering -> dispatched`` for the agent that reconnected; the job goes back to ``running``."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["reclaim_row"], {"id": job_id, "agent": agent_id})
            ok = await cur.fetchone() is not None
            if ok:
                await conn.execute(_SQL["reclaim_job"], {"id": job_id, "agent": agent_id})
            return ok

    async def reclaimable(self, agent_id: str, job_ids: Sequence[str]) -> list[tuple[str, str, float | None]]:
        """Of ``job_ids``, the rows this agent may reclaim: ``recovering`` for it, or still ``dispatched`` to it
        (its old connection died with this or another process). Returns ``(job_id, run_id, deadline)``."""
        if not job_ids:
            return []
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["reclaimable"], {"ids": list(job_ids), "agent": agent_id})
            return [(str(r["id"]), str(r["run_id"]), _epoch(r["recovery_deadline"])) for r in await cur.fetchall()]

    async def owned(self, agent_id: str, job_id: str) -> bool:
        """The database side of the ownership check (§5.10): recovering or dispatched for this agent, or
        already terminal after running on this agent (its late messages are harmless). Another agent's
        messages about a job are never accepted, finished or not."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["owned"], {"id": job_id, "agent": agent_id})
            return await cur.fetchone() is not None

    async def depth(self) -> dict[str, int]:
        """Row counts for ``pending`` and ``dispatched``."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["depth"])
            counts = {"pending": 0, "dispatched": 0}
            counts.update({r["status"]: int(r["n"]) for r in await cur.fetchall()})
            return counts

    # ------------------------------------------------------------------------------------ sweeps
    @asynccontextmanager
    async def singleton(self, duty: str, holder: str) -> AsyncIterator[bool]:
        """Hold ``pg_try_advisory_lock`` of ``duty`` for the block if free; yields whether it was taken. A duty
        reported by ``/cluster/health`` (:data:`~kici_adapters.postgres.singletons.DUTIES`) records ``holder``
        as its last runner."""
        if duty in singletons.DUTIES:
            async with singletons.hold(self._db, duty, holder) as run:
                yield bool(run)
        else:
            async with singletons.try_lock(self._db, singletons.lock_key(duty)) as taken:
                yield taken

    async def announce(self, notice: DispatchNotice) -> None:
        """``NOTIFY`` every process (:mod:`kici_adapters.postgres.dispatch_notices`)."""
        await dispatch_notices.publish(self._db, notice)

    def notices(self) -> AbstractAsyncContextManager[AsyncIterator[DispatchNotice]]:
        """``LISTEN`` on a dedicated connection (:mod:`kici_adapters.postgres.dispatch_notices`)."""
        return dispatch_notices.listen(self._db)

    async def orphaned_dispatched(self, instance_id: str) -> list[tuple[str, str, str]]:
        """Dispatched rows whose agent is not connected to a live process we know of: its agent row names
        this instance (a previous life of this process) or no instance. ``(job_id, run_id, agent_id)``."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["orphaned_dispatched"], {"me": instance_id})
            return [(str(r["id"]), str(r["run_id"]), str(r["agent_id"])) for r in await cur.fetchall()]

    async def recovering(self) -> list[RecoveringRow]:
        """Every recovering row."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["recovering"])
            return [
                RecoveringRow(
                    job_id=str(r["id"]),
                    run_id=str(r["run_id"]),
                    agent_id=str(r["recovery_agent_id"] or ""),
                    deadline=_epoch(r["recovery_deadline"]) or 0.0,
                )
                for r in await cur.fetchall()
            ]

    async def overdue(self, *, grace_s: float) -> Overdue:
        """Rows past a deadline by more than ``grace_s``: ``ack`` (dispatched, unacknowledged: id, attempts),
        ``recovery`` (recovering) and ``expired`` (pending past ``expires_at``)."""
        async with self._db.connection() as conn:
            out: dict[str, list[tuple[str, int]]] = {}
            for key, name in (("ack", "overdue_ack"), ("recovery", "overdue_recovery"), ("expired", "overdue_expired")):
                cur = await conn.execute(_SQL[name], {"g": grace_s})
                out[key] = [(str(r["id"]), int(r["dispatch_attempts"])) for r in await cur.fetchall()]
            return Overdue(ack=tuple(out["ack"]), recovery=tuple(out["recovery"]), expired=tuple(out["expired"]))

    # ------------------------------------------------------------------------------------ agents
    async def agent_connected(
        self,
        *,
        agent_id: str,
        labels: Sequence[str],
        mandatory: Sequence[str],
        platform: str | None,
        arch: str | None,
        version: str | None,
        hostname: str | None,
        max_concurrency: int,
        token_id: str | None,
        instance_id: str,
        metadata: JSONObject,
    ) -> None:
        """Upsert the agent's durable shadow, naming this process as its host."""
        async with self._db.connection() as conn:
            await conn.execute(
                _SQL["agent_connected"],
                {
                    "id": agent_id,
                    "labels": list(labels),
                    "mand": list(mandatory),
                    "platform": platform,
                    "arch": arch,
                    "version": version,
                    "host": hostname,
                    "max": max_concurrency,
                    "token": token_id,
                    "me": instance_id,
                    "meta": Jsonb(metadata),
                },
            )

    async def bind_agent_token(self, agent_id: str, token_id: str) -> bool:
        """Bind ``agent_id`` to the agent token ``token_id`` unless it is bound to another token that is still
        valid (not revoked); True when the id is (now) bound to this token. The first token to register an id
        keeps it until an admin releases it (:meth:`release_agent`) or revokes that token."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["bind_agent_token"], {"id": agent_id, "token": token_id})
            return await cur.fetchone() is not None

    async def release_agent(self, agent_id: str) -> bool:
        """Free ``agent_id`` from its token binding; False when it is unknown or not bound."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["release_agent"], {"id": agent_id})
            return await cur.fetchone() is not None

    async def agent_disconnected(self, agent_id: str, *, instance_id: str) -> None:
        """Clear ``connected_instance`` if this process still holds the agent."""
        async with self._db.connection() as conn:
            await conn.execute(_SQL["agent_disconnected"], {"id": agent_id, "me": instance_id})

    async def release_instance(self, instance_id: str, *, keep: Sequence[str] = ()) -> None:
        """Mark every agent this instance held as disconnected (startup after a crash, or shutdown), except
        ``keep``: agents that registered with this life of the process already."""
        async with self._db.connection() as conn:
            await conn.execute(_SQL["release_instance"], {"me": instance_id, "keep": list(keep)})

    async def agents(self) -> list[ConnectedAgent]:
        """Connected agents (any process), by id."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["connected_agents"])
            return [
                ConnectedAgent(
                    agent_id=r["agent_id"],
                    labels=tuple(r["labels"]),
                    mandatory_labels=tuple(r["mandatory_labels"]),
                    instance=r["connected_instance"],
                )
                for r in await cur.fetchall()
            ]
