"""The runs and jobs to create (:meth:`kici_core.ports.DeliveryInbox.complete`, the run store) and the result of
a re-run (:class:`kici_core.ports.RunReruns`)."""

from __future__ import annotations

from dataclasses import dataclass

from kici_core.jsontypes import JSONObject


@dataclass(frozen=True, slots=True, kw_only=True)
class NeedEdge:
    upstream_name: str  # expanded upstream job name
    run_on: tuple[str, ...]  # terminal job statuses that satisfy the edge


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    job_id: str
    name: str  # expanded name (matrix children carry their suffix)
    base_name: str
    matrix_values: JSONObject | None
    needs: tuple[NeedEdge, ...]
    runs_on: tuple[JSONObject, ...]  # label matchers as in the lock file
    exclude_labels: tuple[JSONObject, ...]
    job_config: JSONObject  # the lock-file job (steps untouched) handed to the agent
    runnable: bool  # needs met: enqueue for dispatch in the same transaction
    status: str = "pending"  # or already "failed"/"skipped" at planning time (see reason)
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    run_id: str
    workflow_name: str
    provider: str
    routing_key: str
    repo_identifier: str | None
    repo_url: str | None
    ref: str | None
    sha: str | None
    trigger_decision: JSONObject
    jobs: tuple[NewJob, ...]
    status: str = "pending"  # already terminal when planning failed every job
    event: JSONObject | None = None
    """The triggering event as agents receive it (``jobConfig.event``, payload included); stored once per run,
    not in its jobs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RerunResult:
    """The attempt a re-run request produced; ``created`` False when its ``key`` had produced it before."""

    run_id: str
    original_run_id: str
    attempt: int
    rerun_jobs: int
    carried_jobs: int
    created: bool = True
