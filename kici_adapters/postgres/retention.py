"""The retention sweeper's storage side: finds finished data past its cutoff and deletes it in small batches.

Each kind is a candidate query (shared by the dry run, which counts, and the sweep, which deletes) and a batch
step: take up to ``batch_size`` candidates with ``FOR UPDATE SKIP LOCKED``, delete their objects from the blob
store, then their rows, in one short transaction; repeat until a batch comes back short. Objects go first, so a
crash leaves at worst rows whose objects are already gone (the next sweep deletes them; deleting a missing object
is not an error), never objects nobody points to.

Never deleted, whatever their age: a delivery whose inbox row is ``pending``, a run that is not finished (or has a
job that is not), a run with a queue row still ``pending``/``dispatched``/``recovering``, a run whose GitHub check
runs are not all sent (``sent_version < version``: an undelivered outbox row), and Platform outbox rows (they are
deleted when sent). The caller holds the ``retention`` singleton lock (:mod:`kici_adapters.postgres.singletons`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, LiteralString

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Connection, Database
from kici_core import keys, retention
from kici_core.ports import BlobStore

__all__ = ["PgRetention", "SweepReport"]

_SQL = queries.load("retention.sql")


@dataclass(slots=True)
class SweepReport:
    """What a sweep removed (or, for a dry run, would remove), by kind (:data:`kici_core.retention.KINDS`)."""

    dry_run: bool
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(retention.KINDS, 0))
    cutoffs: dict[str, str | None] = field(default_factory=dict)

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + int(n)


class PgRetention:
    """Counts and deletes finished data past :class:`kici_core.retention.Cutoffs` (see the module docstring).

    Args:
        db: the pool.
        blobs: the store holding payload objects and large log chunks.
        max_batches: batches per kind per sweep; the rest waits for the next sweep, so one sweep stays short.
    """

    def __init__(self, db: Database, blobs: BlobStore, *, max_batches: int = 200) -> None:
        self._db = db
        self._blobs = blobs
        self._max_batches = max_batches

    async def sweep(
        self, cut: retention.Cutoffs, *, batch_size: int, dry_run: bool = False, on_deleted: Any = None
    ) -> SweepReport:
        """Remove (or with ``dry_run`` count) everything past ``cut``; ``on_deleted(kind, n)`` is called after
        each committed batch (metrics). Raises ``StorageUnavailable`` when the database or the blob store fails
        (what was committed before stays deleted)."""
        report = SweepReport(
            dry_run=dry_run,
            cutoffs={
                "payloads": _iso(cut.payloads),
                "logs": _iso(cut.logs),
                "runs": _iso(cut.runs),
                "eventLog": _iso(cut.event_log),
            },
        )
        steps: list[tuple[datetime | None, Any]] = [
            (cut.payloads, self._payloads),
            (cut.logs, self._log_chunks),
            (cut.runs, self._runs),
            (cut.event_log, self._event_log),
            (cut.now, self._idempotency),
        ]
        for cutoff, step in steps:
            if cutoff is None:
                continue
            for _ in range(self._max_batches):
                async with self._db.transaction() as conn:
                    done, counts = await step(conn, cutoff, None if dry_run else batch_size, dry_run)
                for kind, n in counts.items():
                    report.add(kind, n)
                    if n and on_deleted is not None and not dry_run:
                        on_deleted(kind, n)
                if dry_run or done:
                    break
        return report

    async def _delete_objects(self, names: Sequence[str | None]) -> None:
        for name in names:
            if name:
                await self._blobs.delete(name)

    async def _payloads(
        self, conn: Connection, cutoff: datetime, limit: int | None, dry_run: bool
    ) -> tuple[bool, dict[str, int]]:
        if dry_run:
            return True, {"payloads": await _count(conn, _SQL["payloads_count"], cutoff)}
        rows = await _rows(conn, _SQL["payloads_batch"], cutoff, limit)
        for row in rows:
            await self._delete_objects([row["payload_key"], *(keys.run_payload_key(str(r)) for r in row["run_ids"])])
        ids = [r["id"] for r in rows]
        if ids:
            await conn.execute(_SQL["payloads_delete"], {"ids": ids})
            await conn.execute(_SQL["payloads_mark_expired"], {"ids": ids})
        return _short(rows, limit), {"payloads": len(rows)}

    async def _log_chunks(
        self, conn: Connection, cutoff: datetime, limit: int | None, dry_run: bool
    ) -> tuple[bool, dict[str, int]]:
        if dry_run:
            return True, {"log_chunks": await _count(conn, _SQL["log_chunks_count"], cutoff)}
        rows = await _rows(conn, _SQL["log_chunks_batch"], cutoff, limit)
        await self._delete_objects([r["object_key"] for r in rows])
        if rows:
            await conn.execute(_SQL["log_chunks_delete"], {"ids": [r["id"] for r in rows]})
        return _short(rows, limit), {"log_chunks": len(rows)}

    async def _runs(
        self, conn: Connection, cutoff: datetime, limit: int | None, dry_run: bool
    ) -> tuple[bool, dict[str, int]]:
        rows = await _rows(conn, _SQL["runs_count" if dry_run else "runs_batch"], cutoff, limit)
        counts = {
            "runs": len(rows),
            "jobs": sum(int(r["jobs"]) for r in rows),
            "steps": sum(int(r["steps"]) for r in rows),
            "check_runs": sum(int(r["check_runs"]) for r in rows),
        }
        if dry_run:
            return True, counts
        for row in rows:
            await self._delete_objects([keys.run_payload_key(str(row["run_id"])), *row["log_objects"]])
        if rows:  # jobs, steps, needs, logs, queue rows, run events and check runs go with their run (cascade)
            await conn.execute(_SQL["runs_delete"], {"ids": [r["run_id"] for r in rows]})
        return _short(rows, limit), counts

    async def _event_log(
        self, conn: Connection, cutoff: datetime, limit: int | None, dry_run: bool
    ) -> tuple[bool, dict[str, int]]:
        if dry_run:
            return True, {"event_log": await _count(conn, _SQL["event_log_count"], cutoff)}
        rows = await _rows(conn, _SQL["event_log_batch"], cutoff, limit)
        await self._delete_objects([r["payload_key"] for r in rows])
        if rows:  # the inbox row and an unsent payload go with it (cascade); runs keep their delivery id
            await conn.execute(_SQL["event_log_delete"], {"ids": [r["id"] for r in rows]})
        return _short(rows, limit), {"event_log": len(rows)}

    async def _idempotency(
        self, conn: Connection, cutoff: datetime, limit: int | None, dry_run: bool
    ) -> tuple[bool, dict[str, int]]:
        if dry_run:
            return True, {"idempotency_keys": await _count(conn, _SQL["idempotency_count"], cutoff)}
        rows = await _rows(conn, _SQL["idempotency_batch"], cutoff, limit)
        if rows:
            await conn.execute(
                _SQL["idempotency_delete"], {"s": [r["source_id"] for r in rows], "k": [r["key"] for r in rows]}
            )
        return _short(rows, limit), {"idempotency_keys": len(rows)}


async def _rows(conn: Connection, query: LiteralString, cutoff: datetime, limit: int | None) -> list[dict[str, Any]]:
    cur = await conn.execute(query, {"cutoff": cutoff, "limit": limit})
    return [dict(r) for r in await cur.fetchall()]


async def _count(conn: Connection, query: LiteralString, cutoff: datetime) -> int:
    cur = await conn.execute(query, {"cutoff": cutoff})
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


def _short(rows: Sequence[object], limit: int | None) -> bool:
    return limit is None or len(rows) < limit


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
