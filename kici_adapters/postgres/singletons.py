"""Singleton duties: work that every orchestrator process is ready to do but only one does at a time.

Each duty has its own ``pg_try_advisory_lock`` key, listed here so that no two duties share one (ARCHITECTURE §5).
A process runs a duty only while it holds the duty's lock (:func:`hold`); when that process dies its session ends,
PostgreSQL releases the lock and the next process to try takes the duty over. :func:`hold` also records which
process last ran the duty in ``cluster_duties``, for ``GET /cluster/health`` and ``kici-admin cluster status``.

Keys 543210001 (migrations) and 543210002 (bootstrap admin token) are upstream's; the project's own keys are
``0x6B696369_00NN`` ("kici" and a number).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg.types.json import Jsonb

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Database
from kici_core.jsontypes import JSONObject

_SQL = queries.load("singletons.sql")

__all__ = ["DUTIES", "LOCKS", "Run", "hold", "lock_key", "try_lock"]

LOCKS: dict[str, int] = {
    "migrations": 543210001,  # blocking lock around migrate (kici_adapters.postgres.migrate)
    "bootstrap-token": 543210002,  # transaction lock around the bootstrap admin token upsert
    "dispatch-sweeps": 0x6B696369_0002,  # ack, recovery and queue-expiry deadlines of rows no live process handles
    "dispatch-startup": 0x6B696369_0003,  # restart recovery of this process's previous agents' jobs
    "retention": 0x6B696369_0004,  # the retention sweeper
    "instance-recovery": 0x6B696369_0005,  # recovery of the work of dead processes
    "schedules": 0x6B696369_0006,  # the schedule loop (kici_runtime.orchestrator.scheduler.SCHEDULER_LOCK)
    "scaler": 0x6B696369_0007,  # the auto-scaler's passes (kici_adapters.postgres.scaler.SCALER_LOCK)
}
"""Every advisory lock key the project uses, by name. Add new duties here with the next free number."""

DUTIES: tuple[str, ...] = ("dispatch-sweeps", "retention", "instance-recovery", "schedules")
"""The recurring singleton duties reported by ``/cluster/health`` (a duty nobody ran yet shows no holder)."""


def lock_key(name: str) -> int:
    """The advisory lock key of ``name`` (a key of :data:`LOCKS`)."""
    return LOCKS[name]


@asynccontextmanager
async def try_lock(db: Database, key: int) -> AsyncIterator[bool]:
    """Hold ``pg_try_advisory_lock(key)`` on a pooled connection for the block if it is free; yields whether it
    was taken (the lock is released on exit)."""
    async with db.connection() as conn:
        cur = await conn.execute(_SQL["advisory_try_lock"], {"k": key})
        row = await cur.fetchone()
        taken = bool(row and row["ok"])
        try:
            yield taken
        finally:
            if taken:
                await conn.execute(_SQL["advisory_unlock"], {"k": key})


class Run:
    """What a duty's block may report for ``cluster_duties.last_result`` (set :attr:`result`)."""

    def __init__(self, taken: bool) -> None:
        self.taken = taken
        self.result: JSONObject | None = None

    def __bool__(self) -> bool:
        return self.taken


@asynccontextmanager
async def hold(db: Database, duty: str, instance_id: str) -> AsyncIterator[Run]:
    """Hold the duty's advisory lock for the block when it is free; yields a truthy :class:`Run` when taken.

    On a normal exit of a taken block, ``cluster_duties`` records ``instance_id`` as the duty's last runner (with
    the block's :attr:`Run.result`). The lock is a session lock on a pooled connection, released on exit.
    """
    key = lock_key(duty)
    async with db.connection() as conn:
        cur = await conn.execute(_SQL["advisory_try_lock"], {"k": key})
        row = await cur.fetchone()
        run = Run(bool(row and row["ok"]))
        try:
            yield run
            if run.taken:
                await conn.execute(
                    _SQL["duty_ran"],
                    {"d": duty, "i": instance_id, "r": Jsonb(run.result) if run.result is not None else None},
                )
        finally:
            if run.taken:
                await conn.execute(_SQL["advisory_unlock"], {"k": key})
