"""The GitHub check-run outbox (``github_check_runs``) as the sender sees it.

The state-change transactions (:mod:`kici_adapters.postgres.inbox` creating runs, :mod:`kici_adapters.postgres.runs`
moving jobs and runs) write each check run's state and bump its ``version``. :meth:`PgCheckOutbox.claim` leases
the rows whose latest state was not sent yet (``FOR UPDATE SKIP LOCKED``, then a lease column, so no row lock is
held while GitHub answers and state changes never wait for GitHub); :meth:`PgCheckOutbox.sent` records what
GitHub acknowledged and :meth:`PgCheckOutbox.failed` when to try again. A lease that expires (the process
died mid-send) makes the row claimable again, so an update is delayed, never lost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from kici_adapters.postgres import queries
from kici_adapters.postgres.pool import Connection, Database
from kici_core import checks
from kici_core.jsontypes import JSONValue

_SQL = queries.load("checks.sql")

__all__ = ["CheckProblem", "PendingCheck", "PgCheckOutbox", "check_rows", "insert_checks"]

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")


def check_rows(
    *,
    provider: str,
    run_id: str,
    routing_key: str,
    repo: str | None,
    sha: str | None,
    workflow_name: str,
    run_status: str,
    run_reason: str | None,
    jobs: Sequence[tuple[str, str, str, str | None]],
) -> list[JSONValue]:
    """The ``github_check_runs`` rows of a new run: one for the workflow and one per job (``(job_id, name,
    status, reason)``), queued, or completed when already terminal. None unless the run comes from a GitHub App
    source and tests a commit SHA (a check run lives on a commit)."""
    if provider != "github" or not repo or not _COMMIT_SHA.fullmatch(sha or ""):
        return []
    base = {"run_id": run_id, "routing_key": routing_key, "repo": repo, "head_sha": sha}

    def row(external_id: str, job_id: str | None, name: str, conclusion: str | None, detail: str | None) -> JSONValue:
        return {
            **base,
            "external_id": external_id,
            "job_id": job_id,
            "name": name,
            "status": "completed" if conclusion else "queued",
            "conclusion": conclusion,
            "detail": detail if conclusion else None,
        }

    out = [
        row(run_id, None, checks.workflow_check_name(workflow_name), checks.RUN_CONCLUSIONS.get(run_status), run_reason)
    ]
    out += [
        row(job_id, job_id, checks.job_check_name(workflow_name, name), checks.JOB_CONCLUSIONS.get(status), reason)
        for job_id, name, status, reason in jobs
    ]
    return out


async def insert_checks(conn: Connection, rows: Sequence[JSONValue]) -> None:
    """Insert check rows (from :func:`check_rows`) in the caller's transaction; existing ones are kept."""
    if rows:
        await conn.execute(_SQL["checks_insert"], {"checks": Jsonb(list(rows))})


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingCheck:
    """A claimed check run: its latest state (``version``) and where to send it."""

    id: int
    version: int
    attempts: int
    github_id: int | None
    routing_key: str
    repo: str
    head_sha: str
    name: str
    external_id: str
    run_id: str
    job_id: str | None
    status: str
    conclusion: str | None
    detail: str | None
    agent_id: str | None
    started_at: datetime | None
    completed_at: datetime | None
    workflow_name: str
    job_name: str | None
    delivery_id: str | None
    org_id: str | None
    run_attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckProblem:
    """A run's check runs as ``runs show`` reports them."""

    total: int
    pending: int
    failing: int
    attempts: int
    last_error: str | None
    last_error_at: datetime | None
    next_attempt_at: datetime | None


def _pending(row: dict[str, Any]) -> PendingCheck:
    return PendingCheck(
        id=int(row["id"]),
        version=int(row["version"]),
        attempts=int(row["attempts"]),
        github_id=None if row["github_id"] is None else int(row["github_id"]),
        routing_key=row["routing_key"],
        repo=row["repo"],
        head_sha=row["head_sha"],
        name=row["name"],
        external_id=row["external_id"],
        run_id=str(row["run_id"]),
        job_id=None if row["job_id"] is None else str(row["job_id"]),
        status=row["status"],
        conclusion=row["conclusion"],
        detail=row["detail"],
        agent_id=row["agent_id"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        workflow_name=row["workflow_name"],
        job_name=row["job_name"],
        delivery_id=row["delivery_id"],
        org_id=row["org_id"],
        run_attempt=int(row["run_attempt"] or 1),
    )


class PgCheckOutbox:
    """Claims, acknowledgements and retries of check-run updates (module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[PendingCheck]:
        """Lease up to ``limit`` check runs whose latest state is unsent and due, oldest due first."""
        async with self._db.connection() as conn:
            cur = await conn.execute(
                _SQL["checks_claim"], {"limit": limit, "lease": float(lease_seconds), "worker": worker_id}
            )
            return [_pending(dict(r)) for r in await cur.fetchall()]

    async def release_leases(self, worker_id: str) -> int:
        """Free the rows ``worker_id`` leased (a restarted process taking back what its previous life held)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["checks_release_leases"], {"worker": worker_id})
            return cur.rowcount

    async def sent(self, check: PendingCheck, *, github_id: int | None) -> None:
        """GitHub has the state of ``check.version`` (and, after a create, the check run's id)."""
        async with self._db.connection() as conn:
            await conn.execute(_SQL["check_sent"], {"id": check.id, "version": check.version, "github_id": github_id})

    async def failed(
        self, check: PendingCheck, error: str, *, retry_after: float, give_up: bool = False, forget_id: bool = False
    ) -> None:
        """The send failed: try again after ``retry_after`` seconds, or (``give_up``) not for this state (a later
        state is sent again). ``forget_id``: GitHub no longer knows the check run; create it anew."""
        async with self._db.connection() as conn:
            await conn.execute(
                _SQL["check_failed"],
                {
                    "id": check.id,
                    "error": error[:1000],
                    "delay": max(0.0, retry_after),
                    "give_up": give_up,
                    "forget": forget_id,
                    "version": check.version,
                },
            )

    async def failed_step(self, job_id: str) -> checks.FailedStep | None:
        """The first failed step of ``job_id`` with the raw lines of the end of its log (unmasked)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["job_failed_step"], {"job_id": job_id})
            step = await cur.fetchone()
            index = None if step is None else int(step["step_index"])
            cur = await conn.execute(_SQL["step_log_tail"], {"job_id": job_id, "step": index})
            lines: list[str] = []
            for r in await cur.fetchall():
                lines += str(r["content"]).split("\n")
        if step is None:
            return checks.FailedStep(index=-1, name=None, tail=tuple(lines)) if lines else None
        return checks.FailedStep(
            index=index or 0,
            name=step["step_name"],
            exit_code=step["exit_code"],
            error=step["error_message"],
            tail=tuple(lines),
        )

    async def problems(self, run_id: str) -> CheckProblem | None:
        """How the run's check runs are doing, or None when the run has none."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["run_check_problems"], {"run_id": run_id})
            row = await cur.fetchone()
        if row is None or not row["total"]:
            return None
        return CheckProblem(
            total=int(row["total"]),
            pending=int(row["pending"]),
            failing=int(row["failing"]),
            attempts=int(row["attempts"] or 0),
            last_error=row["last_error"],
            last_error_at=row["last_error_at"],
            next_attempt_at=row["next_attempt_at"],
        )

    async def due(self) -> int:
        """Check runs whose latest state is not sent yet."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["checks_due"])
            row = await cur.fetchone()
        return int(row["n"]) if row else 0
