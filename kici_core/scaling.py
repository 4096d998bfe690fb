"""The container auto-scaler's decisions, sans I/O: which jobs get a container, caps, warm pools, removals.

The runtime's scaler loop gathers a snapshot (the pending jobs, the free slots of connected agents that the
scaler did not start, the scaler's own containers and their phase) and calls :func:`plan` with the time.
The plan says which containers to start (bound to one job, or unbound for a warm pool), which to remove and
why each job that gets nothing still waits. It never reads a clock, makes an id or touches the engine.

Rules:

* a pending job that a free slot of another connected agent admits, or a ready unbound (warm) container of
  ours, gets no new container;
* otherwise the first label set (scalers in configuration order, then their label sets) whose agent labels
  admit the job gets a container bound to that job (one job per container), unless the scaler has
  ``maxAgents`` containers or all scalers together have ``globalMaxAgents``: then the job waits with that
  reason;
* a job whose last spawn failed waits out ``retry_after`` (the driver passes the failure as its reason);
* a warm pool keeps ``size`` unbound containers while the scaler saw demand within ``idleTimeoutSeconds``
  (counted from start-up at first); past that the idle unbound containers are removed;
* a container whose agent connected and then disconnected, whose engine container stopped, that never
  connected within ``start_timeout``, or that is bound to a job another agent took, is removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from kici_core import routing

__all__ = [
    "Binding",
    "Container",
    "LabelSet",
    "PendingJob",
    "Plan",
    "Remove",
    "ScalerConfig",
    "ScalerSpec",
    "Spawn",
    "StaticAgent",
    "WarmPool",
    "capacity_reason",
    "label_set_overlaps",
    "plan",
]

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
Phase = Literal["starting", "idle", "busy", "disconnected", "exited"]
START_TIMEOUT = 120.0
"""Seconds a started container's agent has to connect before the container is removed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSet:
    """One kind of container a scaler starts: the agent's labels and what the container runs."""

    labels: tuple[str, ...]
    image: str
    pull_policy: PullPolicy = "IfNotPresent"
    volumes: tuple[str, ...] = ()
    container_socket: bool = False
    env: tuple[tuple[str, str], ...] = ()
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    allowlist: tuple[str, ...] = ()
    deny_all: bool = False
    backpressure_mode: Literal["pause", "drop"] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmPool:
    """``warmPool``: ``size`` unbound containers kept ready while there was demand in ``idle_timeout`` s."""

    size: int = 0
    idle_timeout: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalerSpec:
    """One ``type: container`` entry of ``scalers.yaml``."""

    name: str
    max_agents: int
    label_sets: tuple[LabelSet, ...]
    runtime: Literal["docker", "podman", "auto"] = "auto"
    socket_path: str | None = None
    host: str | None = None
    orchestrator_url: str | None = None
    extra_hosts: tuple[str, ...] = ()
    network_isolation: bool = True
    warm_pool: WarmPool = field(default_factory=WarmPool)
    mandatory_labels: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    source: str = ""
    """The file the entry came from (for messages)."""

    def agent_labels(self, index: int) -> routing.AgentLabels:
        """What routing sees for an agent of label set ``index`` (a Linux container; its derived
        ``kici:os:linux`` label included)."""
        return routing.AgentLabels(
            labels=frozenset(self.label_sets[index].labels),
            mandatory_labels=frozenset(self.mandatory_labels),
            platform="linux",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalerConfig:
    """The whole scaler configuration (``scalers.yaml`` plus ``scalers.d/*.yaml``)."""

    global_max_agents: int = 50
    scalers: tuple[ScalerSpec, ...] = ()

    def scaler(self, name: str) -> ScalerSpec | None:
        """The scaler called ``name``."""
        return next((s for s in self.scalers if s.name == name), None)


def label_set_overlaps(config: ScalerConfig) -> list[str]:
    """One line per pair of label sets (in any scalers) with the same labels: a job for those labels could
    go to either, so start-up refuses the configuration."""
    seen: dict[frozenset[str], str] = {}
    out: list[str] = []
    for scaler in config.scalers:
        for i, label_set in enumerate(scaler.label_sets):
            key = frozenset(label_set.labels)
            where = f"{scaler.name}.labelSets[{i}]"
            if key in seen:
                out.append(f"{seen[key]} and {where} both provide [{', '.join(sorted(key))}]")
            else:
                seen[key] = where
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """What the scaler tells the dispatcher about an agent it started: the job it was started for, if any
    (a warm-pool agent has none). Such an agent takes one job in its life."""

    bound_job_id: str | None = None


# ------------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True, slots=True, kw_only=True)
class PendingJob:
    """A runnable job in the dispatch queue."""

    job_id: str
    run_id: str
    selector: routing.JobSelector
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticAgent:
    """A connected agent the scaler did not start, with its free slots."""

    labels: routing.AgentLabels
    free_slots: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """One of the scaler's containers, as the driver sees it now.

    ``phase``: ``starting`` (agent not connected yet), ``idle`` (connected, no job), ``busy`` (running its
    job), ``disconnected`` (its agent connected once and left), ``exited`` (the engine container stopped).
    """

    agent_id: str
    scaler: str
    label_set: int
    bound_job_id: str | None
    phase: Phase
    created_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Spawn:
    """Start a container of ``scaler`` / ``label_set``, bound to ``job_id`` (None: a warm-pool container)."""

    scaler: str
    label_set: int
    job_id: str | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Remove:
    """Stop and remove a container, and revoke its agent token."""

    agent_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What one pass decided. ``waiting`` maps job ids to why they still have no container; ``demand``
    names the scalers that served a job in this pass (the driver records the time for warm pools)."""

    spawn: tuple[Spawn, ...] = ()
    remove: tuple[Remove, ...] = ()
    waiting: Mapping[str, str] = field(default_factory=dict)
    demand: frozenset[str] = frozenset()


def capacity_reason(scaler: ScalerSpec, used: int) -> str:
    """The waiting reason of a job whose scaler is full."""
    return f"scaler {scaler.name} at capacity ({used}/{scaler.max_agents} agents)"


def _match(config: ScalerConfig, selector: routing.JobSelector) -> tuple[ScalerSpec, int] | None:
    for scaler in config.scalers:
        for index in range(len(scaler.label_sets)):
            if selector.admits(scaler.agent_labels(index)):
                return scaler, index
    return None


def plan(
    config: ScalerConfig,
    *,
    now: float,
    jobs: Sequence[PendingJob],
    agents: Sequence[StaticAgent],
    containers: Sequence[Container],
    last_demand: Mapping[str, float],
    blocked: Mapping[str, str] | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Plan:
    """Decide one scaler pass. See the module docstring for the rules.

    Args:
        config: the scalers.
        now: seconds (same clock as ``created_at`` and ``last_demand``).
        jobs: pending jobs, any order (taken oldest first).
        agents: connected agents the scaler did not start.
        containers: the scaler's live containers.
        last_demand: scaler name -> last time it served a job (start-up time when none yet).
        blocked: job id -> reason, for jobs whose last spawn failed and that wait before a retry.
        start_timeout: seconds a container may take for its agent to connect.
    """
    blocked = blocked or {}
    pending = {j.job_id for j in jobs}
    removals: list[Remove] = []
    alive: list[Container] = []
    for c in sorted(containers, key=lambda c: (c.created_at, c.agent_id)):
        spec = config.scaler(c.scaler)
        if spec is None or c.label_set >= len(spec.label_sets):
            removals.append(
                Remove(agent_id=c.agent_id, reason=f"{c.scaler}.labelSets[{c.label_set}] is no longer configured")
            )
        elif c.phase == "disconnected":
            removals.append(Remove(agent_id=c.agent_id, reason="agent disconnected"))
        elif c.phase == "exited":
            removals.append(Remove(agent_id=c.agent_id, reason="container exited"))
        elif c.phase == "starting" and now - c.created_at > start_timeout:
            removals.append(Remove(agent_id=c.agent_id, reason=f"agent did not connect within {int(start_timeout)} s"))
        elif c.phase in ("idle", "starting") and c.bound_job_id is not None and c.bound_job_id not in pending:
            removals.append(Remove(agent_id=c.agent_id, reason="its job was taken by another agent or ended"))
        else:
            alive.append(c)

    used: dict[str, int] = {s.name: 0 for s in config.scalers}
    for c in alive:
        used[c.scaler] += 1
    total = sum(used.values())
    bound = {c.bound_job_id for c in alive if c.bound_job_id is not None}
    warm = [c for c in alive if c.bound_job_id is None and c.phase in ("idle", "starting")]
    slot_labels = [a.labels for a in agents if a.free_slots > 0]
    slot_free = [a.free_slots for a in agents if a.free_slots > 0]
    spawns: list[Spawn] = []
    waiting: dict[str, str] = {}
    demand: set[str] = set()

    for job in sorted(jobs, key=lambda j: (j.created_at, j.job_id)):
        if job.job_id in bound:
            continue
        slot = next(
            (i for i, labels in enumerate(slot_labels) if slot_free[i] > 0 and job.selector.admits(labels)), None
        )
        if slot is not None:
            slot_free[slot] -= 1
            continue
        ready = next((c for c in warm if job.selector.admits(_labels(config, c))), None)
        if ready is not None:
            warm.remove(ready)
            demand.add(ready.scaler)
            continue
        match = _match(config, job.selector)
        if match is None:
            continue  # no scaler provides these labels: not ours to explain
        scaler, index = match
        demand.add(scaler.name)
        if job.job_id in blocked:
            waiting[job.job_id] = blocked[job.job_id]
        elif used[scaler.name] >= scaler.max_agents:
            waiting[job.job_id] = capacity_reason(scaler, used[scaler.name])
        elif total >= config.global_max_agents:
            waiting[job.job_id] = f"scalers at global capacity ({total}/{config.global_max_agents} agents)"
        else:
            spawns.append(Spawn(scaler=scaler.name, label_set=index, job_id=job.job_id, run_id=job.run_id))
            used[scaler.name] += 1
            total += 1

    for scaler in config.scalers:
        pool = scaler.warm_pool
        if pool.size <= 0:
            continue
        recent = scaler.name in demand or now - last_demand.get(scaler.name, now) < pool.idle_timeout
        target = pool.size if recent else 0
        mine = [c for c in warm if c.scaler == scaler.name]
        for c in mine[target:]:
            removals.append(
                Remove(agent_id=c.agent_id, reason="warm pool above its size" if recent else "warm pool idle timeout")
            )
            used[scaler.name] -= 1
            total -= 1
        for i in range(len(mine), target):
            if used[scaler.name] >= scaler.max_agents or total >= config.global_max_agents:
                break
            spawns.append(Spawn(scaler=scaler.name, label_set=i % len(scaler.label_sets)))
            used[scaler.name] += 1
            total += 1
    return Plan(spawn=tuple(spawns), remove=tuple(removals), waiting=waiting, demand=frozenset(demand))


def _labels(config: ScalerConfig, container: Container) -> routing.AgentLabels:
    scaler = config.scaler(container.scaler)
    assert scaler is not None  # containers of unknown scalers were removed above
    return scaler.agent_labels(container.label_set)
