"""From matched workflows to run plans, and the pure ``needs`` scheduler.

One event gives one run per matched workflow (lock-file spec §1 step 9). :func:`plan_runs` expands
static matrices, resolves ``needs`` onto the expanded jobs (a job needing a matrix job waits for every
child), fails jobs that cannot be run (unsupported features, bad matrices) and applies the resulting skip
cascade, so a plan says at once which jobs to dispatch.

While a run executes, :func:`release` answers "given these job statuses, which pending jobs may start and
which must be skipped" and :func:`conclude` gives the run's final status once every job is terminal
(agent-protocol spec §7.3, §7.4). Status strings are the exact wire/DB values of agent-protocol §7.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from kici_core import fanout, states
from kici_core.errors import InvalidInput, NotFound
from kici_core.lockfile import Job, Lockfile, Workflow

JOB_STATUSES: Final = frozenset(str(s) for s in states.JobStatus)
TERMINAL_JOB_STATUSES: Final = states.TERMINAL[states.Kind.job]
FAILING_JOB_STATUSES: Final = frozenset({"failed", "timed_out_stale", "drift_dropped"})
"""Job statuses that make the run ``failed`` (listed in its ``Failed jobs: ...`` description)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """A resolved ``needs`` edge onto one expanded upstream job."""

    upstream: str
    run_on: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class NeedsGraph:
    """The ``needs`` edges of one run, over expanded job names. Build it with :func:`needs_graph`."""

    order: tuple[str, ...]
    """Every job name, upstreams before downstreams (ties keep plan order)."""
    upstreams: Mapping[str, tuple[Edge, ...]]
    downstreams: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    """A job the scheduler skips, with the reason (``upstream_unmet: <job> (<status>)``)."""

    job: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    """What :func:`release` decided: jobs to dispatch now, jobs to mark ``skipped``."""

    runnable: tuple[str, ...] = ()
    skipped: tuple[Skip, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Conclusion:
    """A finished run's status and, when failed, ``Failed jobs: <names>``."""

    status: str
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedJob:
    """One job of a run after matrix expansion."""

    job_id: str
    name: str
    """Expanded name (``build (x64, linux)``); unique within the run."""
    base_name: str
    """The lock job's name (``build``); the agent looks the job up by it."""
    lock_job: Job
    matrix_values: Mapping[str, str] | None = None
    needs: tuple[Edge, ...] = ()
    status: str = "pending"
    """Initial status: ``pending``, or already ``failed`` / ``skipped`` (see ``reason``)."""
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    """The plan for one run of one workflow."""

    workflow: Workflow
    jobs: tuple[PlannedJob, ...]
    graph: NeedsGraph
    runnable: tuple[str, ...]
    """Names of the jobs to dispatch as soon as the run is stored."""
    conclusion: Conclusion | None = None
    """Set when every job is already terminal at planning time (e.g. all unsupported)."""
    notes: tuple[str, ...] = field(default=())
    """Human-readable remarks: each unsupported or failed-at-planning job with its reason."""

    @property
    def workflow_name(self) -> str:
        """The planned workflow's name."""
        return self.workflow.name

    @property
    def statuses(self) -> Mapping[str, str]:
        """Initial status per expanded job name, in plan order."""
        return {j.name: j.status for j in self.jobs}

    def job(self, name: str) -> PlannedJob:
        """Return the planned job with expanded name ``name``.

        Raises:
            NotFound: no such job in this plan.
        """
        for job in self.jobs:
            if job.name == name:
                return job
        raise NotFound(f'no job "{name}" in the plan of workflow "{self.workflow.name}"')


def needs_graph(edges: Mapping[str, Sequence[Edge]]) -> NeedsGraph:
    """Build a :class:`NeedsGraph` from ``{job: edges}``; the mapping's order is the plan order.

    Raises:
        InvalidInput: an edge names a job that is not a key, a ``run_on`` status is not terminal, or the
            edges form a cycle.
    """
    downstreams: dict[str, list[str]] = {name: [] for name in edges}
    indegree = dict.fromkeys(edges, 0)
    for name, ups in edges.items():
        for edge in ups:
            if edge.upstream not in downstreams:
                raise InvalidInput(f'job "{name}" needs unknown job "{edge.upstream}"')
            if not edge.run_on or not edge.run_on <= TERMINAL_JOB_STATUSES:
                raise InvalidInput(f'job "{name}": run_on must be a non-empty set of terminal statuses')
            downstreams[edge.upstream].append(name)
            indegree[name] += 1
    position = {name: i for i, name in enumerate(edges)}
    ready = [name for name in edges if indegree[name] == 0]
    order: list[str] = []
    while ready:
        ready.sort(key=position.__getitem__)
        name = ready.pop(0)
        order.append(name)
        for down in downstreams[name]:
            indegree[down] -= 1
            if indegree[down] == 0:
                ready.append(down)
    if len(order) != len(edges):
        stuck = [n for n in edges if n not in set(order)]
        raise InvalidInput("needs cycle among: " + ", ".join(stuck))
    return NeedsGraph(
        order=tuple(order),
        upstreams=MappingProxyType({n: tuple(e) for n, e in edges.items()}),
        downstreams=MappingProxyType({n: tuple(dict.fromkeys(d)) for n, d in downstreams.items()}),
    )


def _status(statuses: Mapping[str, str], name: str) -> str:
    try:
        status = statuses[name]
    except KeyError:
        raise InvalidInput(f'no status given for job "{name}"') from None
    if status not in JOB_STATUSES:
        raise InvalidInput(f'job "{name}" has unknown status "{status}"')
    return status


def release(graph: NeedsGraph, statuses: Mapping[str, str], *, released: AbstractSet[str] = frozenset()) -> Release:
    """Decide which ``pending`` jobs may start and which must be skipped, given every job's status.

    A ``pending`` job (not in ``released``, the jobs the caller already dispatched or queued) is runnable
    when every upstream is terminal with a status in its edge's ``run_on``. It is skipped as soon as one
    upstream is terminal with a status outside ``run_on``, even while others still run; skips cascade
    within the same call. Only ``pending`` jobs are ever released or skipped.

    Raises:
        InvalidInput: a job of the graph has no status, or an unknown one.
    """
    current = {name: _status(statuses, name) for name in graph.order}
    runnable: list[str] = []
    skipped: list[Skip] = []
    for name in graph.order:  # topological, so a skip is seen by every downstream later in the pass
        if current[name] != "pending" or name in released:
            continue
        waiting = False
        unmet: Skip | None = None
        for edge in graph.upstreams[name]:
            up = current[edge.upstream]
            if up not in TERMINAL_JOB_STATUSES:
                waiting = True
            elif up not in edge.run_on:
                unmet = Skip(job=name, reason=f"upstream_unmet: {edge.upstream} ({up})")
                break
        if unmet is not None:
            skipped.append(unmet)
            current[name] = "skipped"
        elif not waiting:
            runnable.append(name)
    return Release(runnable=tuple(runnable), skipped=tuple(skipped))


def conclude(statuses: Mapping[str, str]) -> Conclusion | None:
    """The run's final status once every job is terminal, else None (also None for a run without jobs).

    ``failed`` if any job failed, timed out stale or was drift-dropped; else ``cancelled`` if any was
    cancelled; else ``success`` (skipped jobs count toward success). The rule itself is
    :func:`kici_core.states.run_conclusion`; this adds the ``Failed jobs: a, b`` description.

    Raises:
        InvalidInput: an unknown job status.
    """
    status = states.run_conclusion(statuses.values())
    if status is None:
        return None
    if status == states.RunStatus.failed:
        failed = [name for name, s in statuses.items() if s in FAILING_JOB_STATUSES]
        return Conclusion(status=str(status), description="Failed jobs: " + ", ".join(failed))
    return Conclusion(status=str(status))


def upstream_statuses(graph: NeedsGraph, job: str, statuses: Mapping[str, str]) -> dict[str, str]:
    """The ``upstreamJobStatuses`` of a dispatch: each direct upstream (per matrix child) -> its status."""
    return {e.upstream: _status(statuses, e.upstream) for e in graph.upstreams[job]}


def _expanded(job: Job) -> list[tuple[str, Mapping[str, str] | None]]:
    if job.matrix:
        return [(child.name, child.values) for child in job.matrix]
    return [(job.name, None)]


def _job_problem(workflow: Workflow, job: Job) -> str | None:
    if workflow.unsupported_reason is not None:
        return f"unsupported: {workflow.unsupported_reason}"
    if job.unsupported_reason is not None:
        return f"unsupported: {job.unsupported_reason}"
    if job.matrix_error is not None:
        return f"matrix_expansion: {job.matrix_error}"
    return None


def plan_workflow(workflow: Workflow, *, id_factory: Callable[[], str] | None = None) -> RunPlan:
    """Plan one run of ``workflow``.

    Args:
        workflow: the matched workflow.
        id_factory: called once per expanded job, in plan order, to supply its job id (e.g. a UUID made
            by the caller). Defaults to the deterministic key ``"<workflow>/<expanded name>"``.
    """
    by_base: dict[str, list[str]] = {}
    for job in workflow.jobs:
        by_base[job.name] = [name for name, _ in _expanded(job)]
    groups = {job.group: job.name for job in workflow.jobs if job.group is not None}
    edges: dict[str, list[Edge]] = {}
    planned: list[PlannedJob] = []
    statuses: dict[str, str] = {}
    notes: list[str] = []
    for job in workflow.jobs:
        job_edges: list[Edge] = []
        for need in job.needs:
            target = need.name if need.name is not None else groups[need.group or ""]
            job_edges.extend(Edge(upstream=up, run_on=need.run_on) for up in by_base[target])
        problem = _job_problem(workflow, job)
        if problem is not None:
            notes.append(f"{job.name}: {problem}")
        for name, values in _expanded(job):
            edges[name] = job_edges
            statuses[name] = "pending" if problem is None else "failed"
            job_id = f"{workflow.name}/{name}" if id_factory is None else id_factory()
            planned.append(
                PlannedJob(
                    job_id=job_id,
                    name=name,
                    base_name=job.name,
                    lock_job=job,
                    matrix_values=values,
                    needs=tuple(job_edges),
                    status=statuses[name],
                    reason=problem,
                )
            )
    graph = needs_graph(edges)
    first = release(graph, statuses)
    reasons = {s.job: s.reason for s in first.skipped}
    jobs = tuple(
        PlannedJob(
            job_id=p.job_id,
            name=p.name,
            base_name=p.base_name,
            lock_job=p.lock_job,
            matrix_values=p.matrix_values,
            needs=p.needs,
            status="skipped",
            reason=reasons[p.name],
        )
        if p.name in reasons
        else p
        for p in planned
    )
    final = {j.name: j.status for j in jobs}
    limits = {j.name: fanout.limits_of(j.base_name, j.lock_job.raw, child=j.matrix_values is not None) for j in jobs}
    return RunPlan(
        workflow=workflow,
        jobs=jobs,
        graph=graph,
        runnable=fanout.cap(first.runnable, limits, final, frozenset()),  # maxParallel of matrix children
        conclusion=conclude(final),
        notes=tuple(notes),
    )


def plan_runs(
    lockfile: Lockfile,
    matched_workflow_names: Iterable[str],
    *,
    id_factory: Callable[[], str] | None = None,
) -> list[RunPlan]:
    """Plan one run per matched workflow, in the order given (a name given twice is planned once).

    Args:
        lockfile: the parsed lock file the workflows were matched in.
        matched_workflow_names: names of the matched workflows.
        id_factory: see :func:`plan_workflow`; shared by every run so ids stay unique.

    Raises:
        NotFound: a name is not a workflow of ``lockfile``.
    """
    plans = []
    for name in dict.fromkeys(matched_workflow_names):
        try:
            workflow = lockfile.workflow(name)
        except KeyError:
            raise NotFound(f'workflow "{name}" is not in the lock file') from None
        plans.append(plan_workflow(workflow, id_factory=id_factory))
    return plans
