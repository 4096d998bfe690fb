"""Re-runs: a new attempt of a finished run, linked to the first one (``original_run_id``, ``attempt``).

A re-run copies the latest attempt of the run: the same delivery (so the same triggering event), commit, ref and
jobs as planned from the same lock file (``job_config``), with new run and job ids. ``failed_only`` keeps the
jobs that succeeded (carried over with their outputs, so downstream jobs still see them) and runs the others
again. Everything happens in one transaction that locks the first attempt's row, so two re-runs of one run are
numbered one after the other; with a ``key`` (a webhook delivery asking for the re-run) a repeated request finds
the attempt it created before instead of creating another (the stored key is ``<key>:<first attempt's run id>``). The
new jobs are released and queued by the same
scheduler as any run, and a run from a GitHub App source gets its new check runs in the same transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg.types.json import Jsonb

from kici_adapters.postgres import checks as pg_checks
from kici_adapters.postgres import queries
from kici_adapters.postgres.runs import TERMINAL_RUN, PgRunStore
from kici_core import errors
from kici_core.run_records import RerunResult

_SQL = queries.load("reruns.sql")

__all__ = ["PgReruns", "RerunResult"]


class PgReruns:
    """Re-runs over the run store's tables and scheduler (module docstring)."""

    def __init__(self, runs: PgRunStore) -> None:
        self._runs = runs

    async def rerun(
        self,
        run_id: str,
        *,
        failed_only: bool = False,
        all_when_none_failed: bool = False,
        requested_by: str | None = None,
        key: str | None = None,
    ) -> RerunResult:
        """Start the next attempt of the run ``run_id`` belongs to (any attempt's id works).

        Raises:
            NotFound: no such run.
            Conflict: the latest attempt has not finished, or ``failed_only`` found no job to run again.
        """
        async with self._runs.transaction() as tx:
            conn = tx.conn
            cur = await conn.execute(_SQL["run_root"], {"id": run_id})
            found = await cur.fetchone()
            if found is None:
                raise errors.NotFound(f"Run {run_id} not found")
            root = found["original_run_id"] or found["run_id"]
            await conn.execute(_SQL["run_root_lock"], {"root": root})
            if key is not None:
                key = f"{key}:{root}"
                cur = await conn.execute(_SQL["run_by_rerun_key"], {"key": key})
                done = await cur.fetchone()
                if done is not None:
                    return RerunResult(
                        run_id=str(done["run_id"]),
                        original_run_id=str(root),
                        attempt=int(done["attempt"]),
                        rerun_jobs=0,
                        carried_jobs=0,
                        created=False,
                    )
            cur = await conn.execute(_SQL["run_latest_attempt"], {"root": root})
            latest = await cur.fetchone()
            assert latest is not None
            if latest["status"] not in TERMINAL_RUN:
                raise errors.Conflict(f"attempt {latest['attempt']} of run {root} is still {latest['status']}")
            cur = await conn.execute(_SQL["run_jobs_state"], {"run_id": latest["run_id"]})
            jobs = [dict(j) for j in await cur.fetchall()]
            carry = failed_only and any(j["status"] != "success" for j in jobs)
            if failed_only and not carry and not all_when_none_failed:
                raise errors.Conflict(f"nothing to re-run: every job of attempt {latest['attempt']} succeeded")
            new_id = str(uuid.uuid4())
            new_ids = [str(uuid.uuid4()) for _ in jobs]
            carried = [carry and j["status"] == "success" for j in jobs]
            mapping = [
                {"old_id": str(j["job_id"]), "new_id": n, "carried": c}
                for j, n, c in zip(jobs, new_ids, carried, strict=True)
            ]
            cur = await conn.execute(
                _SQL["rerun_insert"],
                {"new": new_id, "by": requested_by, "root": root, "key": key, "latest": latest["run_id"]},
            )
            run = await cur.fetchone()
            assert run is not None
            await conn.execute(
                _SQL["rerun_jobs_insert"],
                {"new": new_id, "map": Jsonb(mapping), "carried_note": f"succeeded in attempt {latest['attempt']}"},
            )
            await conn.execute(_SQL["rerun_needs_insert"], {"new": new_id, "latest": latest["run_id"]})
            await self._runs.copy_run_extras(conn, source_run_id=str(latest["run_id"]), new_run_id=new_id)
            rerun: list[tuple[str, str, str, str | None]] = [
                (n, str(j["job_name"]), "pending", None)
                for j, n, c in zip(jobs, new_ids, carried, strict=True)
                if not c
            ]
            await pg_checks.insert_checks(
                conn,
                pg_checks.check_rows(
                    provider=run["provider"],
                    run_id=new_id,
                    routing_key=run["routing_key"],
                    repo=run["repo_identifier"],
                    sha=run["sha"],
                    workflow_name=run["workflow_name"],
                    run_status="pending",
                    run_reason=None,
                    jobs=rerun,
                ),
            )
            self._runs.announce_run(tx, run, len(jobs))
            await self._runs.release(tx, new_id)
            return RerunResult(
                run_id=new_id,
                original_run_id=str(root),
                attempt=int(run["attempt"]),
                rerun_jobs=len(rerun),
                carried_jobs=len(jobs) - len(rerun),
            )

    async def attempts(self, run_id: str) -> list[dict[str, Any]]:
        """Every attempt of the run ``run_id`` belongs to, first first (empty for an unknown run)."""
        async with self._runs.db.connection() as conn:
            cur = await conn.execute(_SQL["run_root"], {"id": run_id})
            found = await cur.fetchone()
            if found is None:
                return []
            cur = await conn.execute(_SQL["run_attempts"], {"root": found["original_run_id"] or found["run_id"]})
            return [dict(r) for r in await cur.fetchall()]

    async def runs_at_commit(self, routing_key: str, repo: str, sha: str) -> list[tuple[str, str]]:
        """``(run_id, status)`` of the latest attempt of every run of ``repo`` at ``sha`` from this source."""
        async with self._runs.db.connection() as conn:
            cur = await conn.execute(_SQL["runs_at_commit"], {"rk": routing_key, "repo": repo, "sha": sha})
            return [(r["run_id"], r["status"]) for r in await cur.fetchall()]

    async def run_for_check(self, routing_key: str, external_id: str) -> str | None:
        """The run of the check run with ``external_id`` that this source created, if any."""
        async with self._runs.db.connection() as conn:
            cur = await conn.execute(_SQL["run_for_check"], {"id": external_id, "rk": routing_key})
            row = await cur.fetchone()
        return None if row is None else str(row["run_id"])
