"""In-memory run attempts for re-runs, :class:`FakeRunReruns` (re-exported by :mod:`kici_core.testing.fakes`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from kici_core import errors
from kici_core.run_records import RerunResult


@dataclasses.dataclass(slots=True, kw_only=True)
class FakeAttempt:
    """One attempt of a run in :class:`FakeRunReruns`: job statuses by name, and who asked for it."""

    run_id: str
    root: str
    attempt: int
    status: str
    routing_key: str
    repo: str
    sha: str
    jobs: dict[str, str]
    failed_only: bool = False
    requested_by: str | None = None
    key: str | None = None


class FakeRunReruns:
    """Run attempts in memory. Seed first attempts with :meth:`add_run` (and the check runs pointing at them
    with ``checks[external_id] = run_id``); ``attempts`` holds every attempt, re-runs start ``pending``."""

    def __init__(self, ids: Sequence[str] = ()) -> None:
        self.attempts: dict[str, FakeAttempt] = {}
        self.checks: dict[str, str] = {}
        self._ids = list(ids)

    def add_run(
        self, run_id: str, *, routing_key: str, repo: str, sha: str, status: str, jobs: Mapping[str, str]
    ) -> FakeAttempt:
        attempt = FakeAttempt(
            run_id=run_id,
            root=run_id,
            attempt=1,
            status=status,
            routing_key=routing_key,
            repo=repo,
            sha=sha,
            jobs=dict(jobs),
        )
        self.attempts[run_id] = attempt
        return attempt

    def _latest(self, root: str) -> FakeAttempt:
        return max((a for a in self.attempts.values() if a.root == root), key=lambda a: a.attempt)

    async def rerun(
        self,
        run_id: str,
        *,
        failed_only: bool = False,
        all_when_none_failed: bool = False,
        requested_by: str | None = None,
        key: str | None = None,
    ) -> RerunResult:
        found = self.attempts.get(run_id)
        if found is None:
            raise errors.NotFound(f"Run {run_id} not found")
        root = found.root
        if key is not None:
            key = f"{key}:{root}"
            done = next((a for a in self.attempts.values() if a.key == key), None)
            if done is not None:
                return RerunResult(
                    run_id=done.run_id,
                    original_run_id=root,
                    attempt=done.attempt,
                    rerun_jobs=0,
                    carried_jobs=0,
                    created=False,
                )
        latest = self._latest(root)
        if latest.status not in ("success", "failed", "cancelled"):
            raise errors.Conflict(f"attempt {latest.attempt} of run {root} is still {latest.status}")
        carry = failed_only and any(s != "success" for s in latest.jobs.values())
        if failed_only and not carry and not all_when_none_failed:
            raise errors.Conflict(f"nothing to re-run: every job of attempt {latest.attempt} succeeded")
        jobs = {n: ("success" if carry and s == "success" else "pending") for n, s in latest.jobs.items()}
        new_id = self._ids.pop(0) if self._ids else f"{root}-attempt-{latest.attempt + 1}"
        self.attempts[new_id] = FakeAttempt(
            run_id=new_id,
            root=root,
            attempt=latest.attempt + 1,
            status="pending",
            routing_key=latest.routing_key,
            repo=latest.repo,
            sha=latest.sha,
            jobs=jobs,
            failed_only=carry,
            requested_by=requested_by,
            key=key,
        )
        rerun = sum(1 for s in jobs.values() if s == "pending")
        return RerunResult(
            run_id=new_id,
            original_run_id=root,
            attempt=latest.attempt + 1,
            rerun_jobs=rerun,
            carried_jobs=len(jobs) - rerun,
        )

    async def runs_at_commit(self, routing_key: str, repo: str, sha: str) -> list[tuple[str, str]]:
        roots = sorted(
            {a.root for a in self.attempts.values() if (a.routing_key, a.repo, a.sha) == (routing_key, repo, sha)}
        )
        return [(latest.run_id, latest.status) for latest in map(self._latest, roots)]

    async def run_for_check(self, routing_key: str, external_id: str) -> str | None:
        run_id = self.checks.get(external_id)
        found = self.attempts.get(run_id) if run_id is not None else None
        return run_id if found is not None and found.routing_key == routing_key else None
