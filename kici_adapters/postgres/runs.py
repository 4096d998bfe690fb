"""Run, job and step state in PostgreSQL: what agents report, and what a finished job releases.

Every status write is guarded on the current status (``UPDATE ... WHERE status = ANY(...)``), so late or
racing messages lose. A terminal job is handled in ONE transaction that locks its run row: the job's status,
its dispatch row, the ``needs`` scheduler (:func:`kici_core.planning.release`: downstream jobs become
runnable and are enqueued, or are skipped, cascading), the run's conclusion
(:func:`kici_core.planning.conclude`) and, in platform/hybrid mode, the ``platform_outbox`` rows the Platform
must hear. New queue rows are announced with ``NOTIFY kici_jobs``.

The two reports every job sends (``running`` and its terminal status) run on dedicated autocommit connections
in pipeline mode: statements whose results are not needed yet travel together, so a start costs two round
trips and a finish about four, instead of one per statement plus the pool's checkout check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from kici_adapters.postgres import notify, queries
from kici_adapters.postgres.inbox import LaneConnections
from kici_adapters.postgres.pool import Connection, Database, translate_errors
from kici_adapters.postgres.queries import q
from kici_core import checks, errors, fanout, planning, platform_events
from kici_core.dispatch_records import FinishResult, HeldJob, StartResult
from kici_core.jsontypes import JSONValue

__all__ = ["FinishResult", "PgRunStore", "StartResult"]

ACTIVE_JOB = ["pending", "queued", "running", "recovering", "cancelling"]
TERMINAL_RUN = ("success", "failed", "cancelled")

_SQL = queries.load("runs.sql")


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _labels(runs_on: Any) -> list[JSONValue]:
    if not isinstance(runs_on, list):
        return []
    return [
        m.get("value") if m.get("kind") == "exact" else f"/{m.get('source')}/{m.get('flags', '')}"
        for m in runs_on
        if isinstance(m, dict)
    ]


@dataclass(slots=True)
class _Tx:
    conn: Connection
    outbox: list[platform_events.PlatformEvent] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


def _check_state(
    external_id: str, status: str, conclusions: Mapping[str, str], row: Mapping[str, Any], detail_key: str
) -> dict[str, Any] | None:
    """The ``check_state`` parameters for a job or run entering ``status`` (None: nothing to show)."""
    if status in conclusions:
        state, conclusion = "completed", conclusions[status]
    elif status == "running":
        state, conclusion = "in_progress", None
    else:
        return None  # cancelling, recovering, held: the check keeps its state
    return {
        "external_id": external_id,
        "status": state,
        "conclusion": conclusion,
        "detail": row.get(detail_key),
        "agent_id": row.get("agent_id"),
        "started_at": row.get("started_at"),
        "completed_at": row.get("completed_at"),
    }


class PgRunStore:
    """Job, step and log persistence plus run completion.

    Args:
        db: the pool.
        forward: True in platform/hybrid mode: write ``platform_outbox`` rows in the same transactions.
        instance_id: reported as ``orchestratorId`` on forwarded job statuses.
    """

    def __init__(self, db: Database, *, forward: bool = False, instance_id: str | None = None) -> None:
        self._db = db
        self._forward = forward
        self._instance = instance_id
        self._direct = LaneConnections(db.url)

    async def aclose(self) -> None:
        """Close the dedicated connections of the report path (the pool is the caller's)."""
        await self._direct.aclose()

    @asynccontextmanager
    async def _pipelined(self) -> AsyncIterator[Connection]:
        """One transaction on a dedicated connection in pipeline mode: statements are sent as they are
        executed and the client waits only where a result is read (and at the commit)."""
        with translate_errors(self._db.url):
            async with self._direct.connection() as conn, conn.pipeline(), conn.transaction():
                yield conn

    @property
    def db(self) -> Database:
        """The pool."""
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        """A transaction whose Platform messages and check-run states are written when it ends without error."""
        async with self._db.transaction() as conn:
            tx = _Tx(conn)
            yield tx
            await self._flush(tx)

    def announce_run(self, tx: _Tx, run: Mapping[str, Any], job_count: int) -> None:
        """Report a run's new status (Platform message, check-run state) in ``tx``."""
        self._run_forward(tx, run, job_count)

    async def release(self, tx: _Tx, run_id: str) -> FinishResult:
        """Queue the run's jobs whose needs are met, skip the unmet ones and conclude the run if all are done."""
        return await self._after_terminal(tx, run_id)

    async def copy_run_extras(self, conn: Connection, *, source_run_id: str, new_run_id: str) -> None:
        """Copy what a re-run shares with the attempt it repeats beyond runs, jobs and needs: the triggering
        event its agents receive as ``jobConfig.event``."""
        await conn.execute(_SQL["copy_run_event"], {"new": new_run_id, "old": source_run_id})

    # ------------------------------------------------------------------------------------ outbox
    def _job_forward(self, tx: _Tx, row: Mapping[str, Any], job_id: str, status: str) -> None:
        check = _check_state(job_id, status, checks.JOB_CONCLUSIONS, row, "error_message")
        if check is not None:
            tx.checks.append(check)
        if not self._forward:
            return
        terminal = status in planning.TERMINAL_JOB_STATUSES
        tx.outbox.append(
            platform_events.JobStatusChanged(
                run_id=str(row["run_id"]),
                job_id=job_id,
                job_name=row["job_name"],
                status=status,
                agent_id=row.get("agent_id"),
                orchestrator_id=self._instance,
                runs_on_labels=tuple(v for v in _labels(row.get("runs_on")) if isinstance(v, str)),
                matrix_values=row.get("matrix_values") or None,
                started_at_ms=_ms(row.get("started_at")),
                completed_at_ms=_ms(row.get("completed_at")),
                duration_ms=row.get("duration_ms"),
                error_message=row.get("error_message"),
                log_bytes=int(row.get("log_bytes") or 0) if terminal else None,
            )
        )

    def _run_forward(self, tx: _Tx, run: Mapping[str, Any], job_count: int) -> None:
        check = _check_state(str(run["run_id"]), str(run["status"]), checks.RUN_CONCLUSIONS, run, "failure_reason")
        if check is not None:
            tx.checks.append(check)
        if not self._forward:
            return
        terminal = run["status"] in TERMINAL_RUN
        tx.outbox.append(
            platform_events.RunStatusChanged(
                run_id=str(run["run_id"]),
                workflow_name=run["workflow_name"],
                status=run["status"],
                repo_identifier=run.get("repo_identifier"),
                repo_provider=run.get("provider"),
                sha=run.get("sha"),
                ref=run.get("ref"),
                job_count=job_count,
                started_at_ms=_ms(run.get("started_at") or run.get("created_at")) or 0,
                completed_at_ms=_ms(run.get("completed_at")) if terminal else None,
                duration_ms=run.get("duration_ms") if terminal else None,
                log_bytes=int(run.get("log_bytes") or 0) if terminal else None,
                failure_reason=run.get("failure_reason") or None if terminal and run["status"] == "failed" else None,
            )
        )

    async def _flush(self, tx: _Tx) -> None:
        for event in tx.outbox:
            await tx.conn.execute(_SQL["outbox"], {"kind": event.KIND, "payload": Jsonb(event.record())})
        tx.outbox.clear()
        for params in tx.checks:
            await tx.conn.execute(_SQL["check_state"], params)
        tx.checks.clear()

    # ------------------------------------------------------------------------------------ job status
    async def job_started(self, job_id: str, *, agent_id: str | None) -> StartResult:
        """``job.status running`` (or a reclaim): job -> ``running`` (``started_at`` set once), run -> ``running``.
        A job already terminal is left alone."""
        async with self._pipelined() as conn:
            tx = _Tx(conn)
            cur = await conn.execute(
                _SQL["start_job"],
                {"job_id": job_id, "agent_id": agent_id, "from": ["pending", "queued", "running", "recovering"]},
            )
            run_cur = await conn.execute(_SQL["start_run"], {"job_id": job_id})  # a no-op unless the job now runs
            row = await cur.fetchone()
            run = await run_cur.fetchone()
            if row is None:
                return StartResult(changed=False)
            self._job_forward(tx, row, job_id, "running")
            if run is not None:
                self._run_forward(tx, run, 0)
            await self._flush(tx)
            return StartResult(changed=True)

    async def set_job_status(self, job_id: str, status: str, *, from_statuses: Sequence[str]) -> bool:
        """A guarded non-terminal change (``cancelling``, ``recovering``); True when applied."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                _SQL["set_job_status"], {"job_id": job_id, "status": status, "from": list(from_statuses)}
            )
            row = await cur.fetchone()
            if row is None:
                return False
            tx = _Tx(conn)
            self._job_forward(tx, row, job_id, status)
            await self._flush(tx)
            return True

    async def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        outputs: JSONValue = None,
        row_status: str = "completed",
        pending_row_status: str = "expired",
        require_row: str | None = None,
    ) -> FinishResult:
        """End a job with a terminal ``status`` and run what follows, in one transaction (module docstring).

        ``row_status`` is the dispatch row's new status when it was dispatched/recovering (``completed`` for
        an agent's report, ``failed`` when the orchestrator ends the job); ``pending_row_status`` when it was
        still pending. A job already terminal makes this a no-op (``changed=False``); so does a dispatch row
        whose status is not ``require_row`` when that is given (a recovery window that a reclaim beat).

        Raises:
            InvalidInput: ``status`` is not a terminal job status.
            StorageUnavailable: the database is unreachable.
        """
        if status not in planning.TERMINAL_JOB_STATUSES:
            raise errors.InvalidInput(f"{status!r} is not a terminal job status")
        async with self._pipelined() as conn:
            end_params = {
                "job_id": job_id,
                "status": status,
                "error": error,
                "outputs": None if outputs is None else Jsonb(outputs),
                "from": ACTIVE_JOB,
            }
            cur = await conn.execute(_SQL["lock_run_of_job"], {"job_id": job_id})
            # Without a guard the end is sent with the lock (it runs after it; without a run it changes nothing).
            ended = await conn.execute(_SQL["end_job"], end_params) if require_row is None else None
            found = await cur.fetchone()
            if found is None:
                return FinishResult(changed=False)
            run_id = found["run_id"]
            if require_row is not None:
                cur = await conn.execute(_SQL["lock_queue_row"], {"id": job_id})
                queue_row = await cur.fetchone()
                if queue_row is None or queue_row["status"] != require_row:
                    return FinishResult(changed=False, run_id=str(run_id))
                ended = await conn.execute(_SQL["end_job"], end_params)
            assert ended is not None
            row = await ended.fetchone()
            if row is None:
                return FinishResult(changed=False, run_id=str(run_id))
            tx = _Tx(conn)
            self._job_forward(tx, row, job_id, status)
            await conn.execute(
                _SQL["end_row"], {"job_id": job_id, "row_status": row_status, "pending_to": pending_row_status}
            )
            await conn.execute(_SQL["cancel_steps"], {"job_id": job_id})
            result = await self._after_terminal(tx, str(run_id))
            await self._flush(tx)
            return result

    async def _after_terminal(self, tx: _Tx, run_id: str) -> FinishResult:
        """Release downstream jobs, skip unmet ones, conclude the run (inside the caller's transaction)."""
        conn = tx.conn
        cur = await conn.execute(_SQL["run_jobs"], {"run_id": run_id})
        jobs = await cur.fetchall()
        cur = await conn.execute(_SQL["run_needs"], {"run_id": run_id})
        edges: dict[str, list[planning.Edge]] = {j["job_name"]: [] for j in jobs}
        for need in await cur.fetchall():
            if need["job_name"] in edges and need["upstream_name"] in edges:
                edges[need["job_name"]].append(
                    planning.Edge(upstream=need["upstream_name"], run_on=frozenset(need["run_on"]))
                )
        statuses = {j["job_name"]: j["status"] for j in jobs}
        released = frozenset(j["job_name"] for j in jobs if j["needs_satisfied"])
        # --- fan-out limits of matrix children (maxParallel, failFast)
        limits = {
            j["job_name"]: fanout.limits_of(
                j["base_name"], {"maxParallel": j["max_parallel"], "failFast": j["fail_fast"]}, child=j["child"]
            )
            for j in jobs
        }
        victims = fanout.fail_fast_victims(limits, statuses)
        cancel = await self._fail_fast(tx, run_id, victims, statuses) if victims else []
        decision = planning.release(planning.needs_graph(edges), statuses, released=released)
        queued: list[str] = []
        skipped: list[str] = []
        for skip in decision.skipped:
            cur = await conn.execute(_SQL["skip"], {"run_id": run_id, "name": skip.job, "reason": skip.reason})
            row = await cur.fetchone()
            if row is not None:
                statuses[skip.job] = "skipped"
                skipped.append(str(row["job_id"]))
                self._job_forward(
                    tx, {**row, "run_id": run_id, "error_message": skip.reason}, str(row["job_id"]), "skipped"
                )
        runnable = fanout.cap(decision.runnable, limits, statuses, released)
        if runnable:
            cur = await conn.execute(_SQL["release"], {"run_id": run_id, "names": list(runnable)})
            queued = [str(r["job_id"]) for r in await cur.fetchall()]
            if queued:
                await conn.execute(_SQL["enqueue"], {"ids": queued})
                await notify.notify(conn, notify.JOBS, run_id)
        run_status = await self._conclude(tx, run_id, statuses)
        return FinishResult(
            changed=True,
            run_id=run_id,
            queued=tuple(queued),
            skipped=tuple(skipped),
            run_status=run_status,
            cancel=tuple(cancel),
        )

    async def _fail_fast(
        self, tx: _Tx, run_id: str, victims: Mapping[str, str], statuses: dict[str, str]
    ) -> list[tuple[str, str]]:
        """Stop the unfinished siblings of a failed failFast matrix child; returns those to cancel on agents."""
        on_agents: list[tuple[str, str]] = []
        for name, reason in victims.items():
            params = {"run_id": run_id, "name": name, "reason": reason}
            cur = await tx.conn.execute(_SQL["fail_fast_waiting"], params)
            row = await cur.fetchone()
            if row is not None:
                statuses[name] = "cancelled"
                await tx.conn.execute(_SQL["expire_pending_row"], {"id": row["job_id"]})
                self._job_forward(tx, {**row, "run_id": run_id}, str(row["job_id"]), "cancelled")
                continue
            cur = await tx.conn.execute(_SQL["fail_fast_on_agent"], params)
            on_agents += [(str(r["job_id"]), reason) for r in await cur.fetchall()]
        return on_agents

    async def _conclude(self, tx: _Tx, run_id: str, statuses: Mapping[str, str]) -> str | None:
        conclusion = planning.conclude(statuses)
        if conclusion is None:
            return None
        cur = await tx.conn.execute(
            _SQL["conclude"], {"run_id": run_id, "status": conclusion.status, "reason": conclusion.description}
        )
        run = await cur.fetchone()
        if run is None:
            return None
        self._run_forward(tx, run, len(statuses))
        return conclusion.status

    # ------------------------------------------------------------------------------------ steps, logs
    async def job_heartbeat(self, job_id: str) -> None:
        """``job.heartbeat``: ``last_heartbeat_at = now()``, only while the job is ``running``."""
        async with self._db.connection() as conn:
            await conn.execute(_SQL["heartbeat"], {"job_id": job_id})

    async def step_status(
        self,
        *,
        run_id: str,
        job_id: str,
        step_index: int,
        step_name: str,
        state: str,
        data: Mapping[str, Any] | None,
        step_type: str | None,
        extra: Mapping[str, JSONValue] | None = None,
    ) -> bool:
        """Record a ``step.status`` (insert or guarded update: a terminal step stays terminal)."""
        data = data or {}
        stype = step_type or (data.get("step_type") if isinstance(data.get("step_type"), str) else None)
        exit_code = data.get("exitCode") if isinstance(data.get("exitCode"), int) else None
        error = data.get("error") if isinstance(data.get("error"), str) else None
        duration = data.get("durationMs") if isinstance(data.get("durationMs"), int | float) else None
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["job_name"], {"job_id": job_id, "run_id": run_id})
            job = await cur.fetchone()
            if job is None:
                return False
            cur = await conn.execute(
                _SQL["step_upsert"],
                {
                    "run_id": run_id,
                    "job_id": job_id,
                    "step_index": step_index,
                    "step_name": step_name,
                    "step_type": stype,
                    "status": state,
                    "exit_code": exit_code,
                    "error": error,
                    "terminal": state not in ("running", "pending"),
                    "duration_ms": None if duration is None else int(duration),
                },
            )
            if await cur.fetchone() is None:
                return False
            if self._forward:
                lifted = {
                    key: (extra or {}).get(key, data.get(key))
                    for key in ("secretsAccessed", "concurrencyKind", "groupId")
                }
                rest = {k: v for k, v in data.items() if k not in lifted}
                event = platform_events.StepStatusChanged(
                    run_id=run_id,
                    job_id=job_id,
                    job_name=job["job_name"],
                    step_index=step_index,
                    step_name=step_name,
                    state=state,
                    data=rest or None,
                    secrets_accessed=lifted["secretsAccessed"],
                    concurrency_kind=lifted["concurrencyKind"],
                    group_id=lifted["groupId"],
                )
                await conn.execute(_SQL["outbox"], {"kind": event.KIND, "payload": Jsonb(event.record())})
            return True

    async def append_log(self, *, run_id: str, job_id: str, step_index: int, lines: Sequence[str]) -> bool:
        """Append one ``log.chunk`` (``stepIndex -1`` is stored as the job-level bucket, NULL)."""
        content = "\n".join(lines).replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL; jobs may print it
        size = len(content.encode())
        index = None if step_index < 0 else step_index
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["job_name"], {"job_id": job_id, "run_id": run_id})
            if await cur.fetchone() is None:
                return False
            for _ in range(5):  # two writers for one (job, step) race on seq: retry
                cur = await conn.execute(
                    _SQL["log_insert"],
                    {"run_id": run_id, "job_id": job_id, "step_index": index, "content": content, "bytes": size},
                )
                if await cur.fetchone() is not None:
                    break
            await conn.execute(_SQL["log_bytes"], {"job_id": job_id, "bytes": size})
            if self._forward:
                chunk = platform_events.LogLines(
                    run_id=run_id, job_id=job_id, step_index=step_index, lines=tuple(lines)
                )
                await conn.execute(_SQL["outbox"], {"kind": chunk.KIND, "payload": Jsonb(chunk.record())})
            return True

    # ------------------------------------------------------------------------------------ cancel
    async def begin_cancel(self, run_id: str, *, reason: str, cancelled_by: str | None) -> list[HeldJob]:
        """Start cancelling a run: waiting jobs -> ``cancelled``, pending queue rows -> ``expired``, attribution.
        Returns the run's dispatched/recovering rows.

        Raises:
            NotFound: no such run.
            Conflict: the run is already terminal (message = its status).
        """
        async with self._db.transaction() as conn:
            cur = await conn.execute(_SQL["lock_run"], {"run_id": run_id})
            run = await cur.fetchone()
            if run is None:
                raise errors.NotFound(f"Run {run_id} not found")
            if run["status"] in TERMINAL_RUN:
                raise errors.Conflict(run["status"])
            tx = _Tx(conn)
            cur = await conn.execute(_SQL["cancel_waiting_jobs"], {"run_id": run_id, "reason": reason})
            for row in await cur.fetchall():
                self._job_forward(tx, row, str(row["job_id"]), "cancelled")
            await conn.execute(_SQL["expire_pending_rows_of_run"], {"run_id": run_id})
            await conn.execute(_SQL["cancel_attribution"], {"run_id": run_id, "by": cancelled_by, "reason": reason})
            cur = await conn.execute(_SQL["held_rows_of_run"], {"run_id": run_id})
            held = [
                HeldJob(
                    job_id=str(r["id"]),
                    agent_id=r["agent_id"],
                    recovery_agent_id=r["recovery_agent_id"],
                    status=str(r["status"]),
                )
                for r in await cur.fetchall()
            ]
            await self._flush(tx)
            return held

    async def settle_cancel(self, run_id: str, *, reason: str, notified: bool) -> str:
        """Finish a cancel: with agents notified the run becomes ``cancelling`` (it ends when they report);
        otherwise every remaining job is ``cancelled`` and the run concluded now. Returns the run's status."""
        async with self._db.transaction() as conn:
            tx = _Tx(conn)
            cur = await conn.execute(_SQL["lock_run"], {"run_id": run_id})
            run = await cur.fetchone()
            if run is None or run["status"] in TERMINAL_RUN:
                return "cancelled" if run is None else str(run["status"])
            if notified:
                cur = await conn.execute(_SQL["run_cancelling"], {"run_id": run_id})
                updated = await cur.fetchone()
                if updated is not None:
                    self._run_forward(tx, updated, 0)
                await self._flush(tx)
                return "cancelling"
            cur = await conn.execute(
                _SQL["cancel_active_jobs"], {"run_id": run_id, "reason": reason, "from": ACTIVE_JOB}
            )
            for row in await cur.fetchall():
                self._job_forward(tx, row, str(row["job_id"]), "cancelled")
            await conn.execute(_SQL["fail_held_rows_of_run"], {"run_id": run_id})
            cur = await conn.execute(_SQL["run_jobs"], {"run_id": run_id})
            statuses = {j["job_name"]: j["status"] for j in await cur.fetchall()}
            status = await self._conclude(tx, run_id, statuses)
            if status is None:  # a run without jobs
                cur = await conn.execute(_SQL["conclude"], {"run_id": run_id, "status": "cancelled", "reason": None})
            await self._flush(tx)
            return status or "cancelled"

    # ------------------------------------------------------------------------------------ reads (admin)
    async def list_runs(
        self,
        *,
        statuses: Sequence[str] = (),
        workflow: str | None = None,
        repo: str | None = None,
        since: datetime | None = None,
        routing_key: str | None = None,
        limit: int = 20,
        offset: int = 0,
        branch: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Runs newest first, with the total matching count. ``branch`` matches the run's ref (a branch name)."""
        params = {
            "st": list(statuses) or None,
            "wf": workflow,
            "repo": repo,
            "since": since,
            "rk": routing_key,
            "limit": limit,
            "offset": offset,
            "ref": branch,
        }
        async with self._db.connection() as conn:
            cur = await conn.execute(q("runs_count"), params)
            row = await cur.fetchone()
            total = int(row["n"]) if row else 0
            cur = await conn.execute(q("runs_page"), params)
            return [dict(r) for r in await cur.fetchall()], total

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """One run row, or None (also for a malformed id)."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["get_run"], {"id": run_id})
            row = await cur.fetchone()
            return None if row is None else dict(row)

    async def list_jobs(self, run_id: str, *, include_steps: bool = False) -> list[dict[str, Any]]:
        """The run's jobs (with needs, dispatch row status and, optionally, steps) in creation order."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["list_jobs"], {"id": run_id})
            jobs = [dict(r) for r in await cur.fetchall()]
            cur = await conn.execute(_SQL["list_needs"], {"id": run_id})
            needs: dict[str, list[dict[str, Any]]] = {}
            for n in await cur.fetchall():
                needs.setdefault(n["job_name"], []).append(
                    {"upstreamName": n["upstream_name"], "runOn": list(n["run_on"])}
                )
            steps: dict[Any, list[dict[str, Any]]] = {}
            if include_steps:
                cur = await conn.execute(_SQL["list_steps"], {"id": run_id})
                for s in await cur.fetchall():
                    steps.setdefault(s["job_id"], []).append(dict(s))
        for job in jobs:
            job["needs"] = needs.get(job["job_name"], [])
            if include_steps:
                job["steps"] = steps.get(job["job_id"], [])
        return jobs

    async def logs(
        self, run_id: str, *, job_name: str | None = None, after: int = 0, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Log chunks of a run (or one job) in arrival order, those with ``id > after``."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["run_logs"], {"id": run_id, "job": job_name, "after": after, "limit": limit})
            return [dict(r) for r in await cur.fetchall()]
