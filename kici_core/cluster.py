"""Several orchestrator processes on one database: the cluster-wide view of instances, duties and agents.

Every process records itself (``InstanceInfo``: a heartbeat) and mirrors the agents it holds with their load
(``ClusterAgent``) through the :class:`~kici_core.ports.ClusterDirectory` port. The functions here turn those
records into answers, purely: which instances are alive (:func:`instance_state`), the ``/cluster/health`` body
(:func:`health`), and "why is my job waiting" over the agents of every process (:func:`why_waiting`). Time is an
argument; the liveness rule is the same one the adapter's SQL applies (heartbeat older than the timeout = dead).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from kici_core import routing
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.ports import ClusterDirectory

__all__ = [
    "ClusterAgent",
    "DutyInfo",
    "InstanceInfo",
    "InstanceState",
    "agent_view",
    "explain",
    "health",
    "instance_state",
    "why_waiting",
]

InstanceState = Literal["alive", "stopped", "dead"]


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceInfo:
    """One orchestrator process as recorded in the database."""

    instance_id: str
    hostname: str | None = None
    pid: int | None = None
    version: str | None = None
    mode: str | None = None
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None
    recovered_at: datetime | None = None
    recovered_by: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DutyInfo:
    """A singleton duty and the process that last ran it."""

    duty: str
    instance_id: str | None = None
    last_run_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterAgent:
    """An agent connected to some live process, with its load as that process last mirrored it."""

    agent_id: str
    instance_id: str
    labels: tuple[str, ...]
    """Effective labels (the wire labels plus the derived ``kici:os:*`` / ``kici:arch:*``)."""
    mandatory_labels: tuple[str, ...] = ()
    max_concurrency: int = 1
    active_jobs: int = 0
    accepting: bool = True
    hostname: str | None = None
    platform: str | None = None
    arch: str | None = None
    version: str | None = None
    connected_at: datetime | None = None

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - self.active_jobs) if self.accepting else 0


def instance_state(instance: InstanceInfo, *, now: datetime, timeout: timedelta) -> InstanceState:
    """``stopped`` after a clean shutdown, ``dead`` when its heartbeat is older than ``timeout``, else ``alive``."""
    if instance.stopped_at is not None:
        return "stopped"
    return "dead" if instance.heartbeat_at < now - timeout else "alive"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def agent_view(agent: ClusterAgent) -> JSONObject:
    """The JSON shape of one agent in the cluster-wide agent list (admin API, dashboard)."""
    return {
        "agentId": agent.agent_id,
        "instanceId": agent.instance_id,
        "labels": list(agent.labels),
        "mandatoryLabels": list(agent.mandatory_labels),
        "maxConcurrency": agent.max_concurrency,
        "activeJobs": agent.active_jobs,
        "accepting": agent.accepting,
        "hostname": agent.hostname,
        "platform": agent.platform,
        "arch": agent.arch,
        "version": agent.version,
        "connectedAt": _iso(agent.connected_at),
    }


def health(
    *,
    me: str,
    instances: Sequence[InstanceInfo],
    duties: Sequence[DutyInfo],
    agents: Sequence[ClusterAgent],
    active_runs: int,
    now: datetime,
    timeout: timedelta,
    known_duties: Sequence[str] = (),
) -> JSONObject:
    """The body of ``GET /cluster/health``.

    ``status`` is ``healthy`` when every registered process is alive or stopped cleanly, ``degraded`` when one
    died and its work is not recovered yet (another process takes it over; see ``recoveredBy``). The counters
    keep upstream's names (``instanceId``, ``role``, ``peerCount``, ``connectedPeers``, ``agentCount``,
    ``activeRuns``); ``instances`` and ``duties`` say which process is where and which one runs each duty.
    """
    per_instance: dict[str, int] = {}
    for agent in agents:
        per_instance[agent.instance_id] = per_instance.get(agent.instance_id, 0) + 1
    rows: list[JSONValue] = []
    unrecovered = 0
    alive_peers = 0
    for inst in sorted(instances, key=lambda i: i.instance_id):
        state = instance_state(inst, now=now, timeout=timeout)
        if state == "dead" and inst.recovered_at is None:
            unrecovered += 1
        if state == "alive" and inst.instance_id != me:
            alive_peers += 1
        rows.append(
            {
                "instanceId": inst.instance_id,
                "state": state,
                "self": inst.instance_id == me,
                "hostname": inst.hostname,
                "pid": inst.pid,
                "version": inst.version,
                "mode": inst.mode,
                "startedAt": _iso(inst.started_at),
                "lastHeartbeatAt": _iso(inst.heartbeat_at),
                "heartbeatAgeSeconds": round(max(0.0, (now - inst.heartbeat_at).total_seconds()), 3),
                "stoppedAt": _iso(inst.stopped_at),
                "recoveredAt": _iso(inst.recovered_at),
                "recoveredBy": inst.recovered_by,
                "agents": per_instance.get(inst.instance_id, 0),
            }
        )
    by_duty = {d.duty: d for d in duties}
    duty_rows: list[JSONValue] = []
    for name in dict.fromkeys([*known_duties, *sorted(by_duty)]):
        d = by_duty.get(name)
        duty_rows.append(
            {"duty": name, "instanceId": d.instance_id if d else None, "lastRunAt": _iso(d.last_run_at) if d else None}
        )
    peers = [i for i in instances if i.instance_id != me and instance_state(i, now=now, timeout=timeout) != "stopped"]
    return {
        "status": "degraded" if unrecovered else "healthy",
        "instanceId": me,
        "role": "coordinator",
        "peerCount": len(peers),
        "connectedPeers": alive_peers,
        "agentCount": len(agents),
        "activeRuns": active_runs,
        "timestamp": _iso(now),
        "instances": rows,
        "duties": duty_rows,
    }


def explain(
    selector: routing.JobSelector, agents: Sequence[ClusterAgent], *, held: Iterable[str] = ()
) -> routing.WaitExplanation:
    """Why none of ``agents`` (connected to any live process) takes a job with ``selector``; ``held`` names the
    agents left alone after a ``busy`` reject (known to the process holding them)."""
    return routing.explain_waiting(
        selector,
        {
            a.agent_id: routing.AgentLabels(
                labels=frozenset(a.labels),
                mandatory_labels=frozenset(a.mandatory_labels),
                platform=a.platform,
                arch=a.arch,
            )
            for a in agents
        },
        held=held,
    )


async def why_waiting(directory: ClusterDirectory, selector: routing.JobSelector) -> routing.WaitExplanation:
    """Why no agent takes a job with ``selector``, over the agents connected to every live process."""
    return explain(selector, await directory.agents())
