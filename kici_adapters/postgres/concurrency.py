"""Workflow concurrency groups over PostgreSQL (``concurrency_slots``), shared by every orchestrator process.

Each decision about one group runs in one transaction that first takes ``pg_advisory_xact_lock`` on the group's
key (routing key + group), so two processes answering reports for the same group at once decide one after the
other. The decisions themselves are :mod:`kici_core.concurrency`'s; the workflow's ``concurrency`` settings
travel in each job's ``jobConfig.workflowConcurrency``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Connection, Database
from kici_core import concurrency
from kici_core.concurrency import Promoted

_SQL = queries.load("concurrency.sql")

__all__ = ["PgConcurrency", "Promoted"]


async def _line(conn: Connection, rk: str, group: str) -> tuple[list[str], list[str], Any]:
    cur = await conn.execute(_SQL["group_line"], {"rk": rk, "group": group})
    rows = await cur.fetchall()
    holders = list(dict.fromkeys(r["run_id"] for r in rows if r["status"] == "holding"))
    waiting = list(dict.fromkeys(r["run_id"] for r in rows if r["status"] == "waiting"))
    settings = next((r["settings"] for r in rows if r["status"] == "waiting"), None)
    return holders, waiting, settings


class PgConcurrency:
    """Concurrency-group slots (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def report(self, *, job_id: str, run_id: str, agent_id: str, group: str) -> concurrency.Decision:
        """Decide a ``job.concurrency.report`` and record it. A job whose workflow declares no group proceeds."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["job_concurrency"], {"job": job_id, "run": run_id})
            row = await cur.fetchone()
            settings = concurrency.settings_of(row["settings"]) if row is not None else None
            if row is None or settings is None:
                return concurrency.Decision(action="proceed")
            rk = row["routing_key"]
            await conn.execute(_SQL["group_lock"], {"rk": rk, "group": group})
            holders, waiting, _ = await _line(conn, rk, group)
            decision = concurrency.decide(settings, group=group, run_id=run_id, holders=holders, waiting=waiting)
            if decision.supersede:
                await conn.execute(
                    _SQL["slots_cancel_runs"], {"rk": rk, "group": group, "runs": list(decision.supersede)}
                )
            await conn.execute(
                _SQL["slot_upsert"],
                {
                    "rk": rk,
                    "group": group,
                    "run": run_id,
                    "job": job_id,
                    "agent": agent_id,
                    "status": "holding" if decision.action == "proceed" else "waiting",
                },
            )
            return decision

    async def release_run(self, run_id: str) -> list[Promoted]:
        """A run ended: free its slots and let the next waiting runs of each group in."""
        promoted: list[Promoted] = []
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["run_slots_release"], {"run": run_id})
            groups = sorted({(r["routing_key"], r["group_key"]) for r in await cur.fetchall()})
            for rk, group in groups:
                await conn.execute(_SQL["group_lock"], {"rk": rk, "group": group})
                holders, waiting, raw = await _line(conn, rk, group)
                settings = concurrency.settings_of(raw) or concurrency.Settings(cancel_in_progress=False)
                runs = concurrency.promote(settings, holders=holders, waiting=waiting)
                if not runs:
                    continue
                cur = await conn.execute(_SQL["group_runs_promote"], {"rk": rk, "group": group, "runs": list(runs)})
                promoted += [
                    Promoted(job_id=r["job_id"], run_id=r["run_id"], agent_id=r["agent_id"])
                    for r in await cur.fetchall()
                ]
        return promoted

    async def drop_agent(self, agent_id: str) -> int:
        """An agent went away: its waiting entries are cancelled (its jobs are recovered or failed elsewhere)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["agent_waiting_cancel"], {"a": agent_id})
            return cur.rowcount

    async def ended_runs_with_slots(self, limit: int) -> list[str]:
        """Runs that ended but still hold or wait on a slot (their release was never committed)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["ended_runs_with_slots"], {"limit": limit})
            return [r["run_id"] for r in await cur.fetchall()]

    async def waiting_in_run(self, run_id: str) -> dict[str, str]:
        """Why each of the run's jobs waits for a concurrency group (job id -> reason), for ``runs show``."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["waiting_in_run"], {"run": run_id})
            rows: Sequence[Any] = await cur.fetchall()
        return {
            r["job_id"]: f"{concurrency.queued_reason(r['group_key'])}: held by run {r['holders'] or '-'}, "
            f"{r['ahead']} run(s) ahead"
            for r in rows
        }
