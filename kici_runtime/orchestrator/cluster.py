"""This process as a member of a cluster of orchestrator processes sharing one PostgreSQL.

:class:`ClusterMember` runs in every process (it is one of the runtime's background loops):

* it registers the process in ``cluster_instances`` and heartbeats every ``KICI_CLUSTER_HEARTBEAT_INTERVAL_MS``;
  a clean shutdown marks it ``stopped``;
* it mirrors the load of the agents connected here (active jobs, accepting) into ``agents`` when it changes (checked
  every second, one statement for all changes), so every process sees every agent: "why is my job waiting",
  ``kici_agents_active`` and ``/cluster/health`` read that mirror;
* it runs the ``instance-recovery`` singleton duty: a process whose heartbeat is older than
  ``KICI_CLUSTER_INSTANCE_TIMEOUT_MS`` is dead, and the jobs its agents were running become ``recovering`` with
  the agents' recovery window (:meth:`kici_adapters.postgres.cluster.PgCluster.recover`); agents reconnecting
  to any process reclaim them, the others fail when the window ends (dispatch sweep); deliveries it was
  processing are freed for the others at once;
* if this process finds it was declared dead while alive (a long pause), it takes its agents and jobs back.

Dispatch across processes stays "agents pull work through their own process" (ARCHITECTURE §3): every process
hears every queued job (``NOTIFY kici_jobs`` plus a poll) and offers it to its own agents with free slots, least
loaded first; the first claim wins. A job therefore waits only while no process has an eligible agent with a free
slot: nothing starves, though load is balanced per process rather than globally.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from contextlib import suppress

import anyio

from kici_adapters import metrics
from kici_adapters.postgres import singletons
from kici_adapters.postgres.cluster import PgCluster
from kici_adapters.postgres.pool import Database
from kici_core import errors
from kici_core.dispatch import AgentLoad
from kici_runtime.orchestrator.dispatcher import AgentHub

__all__ = ["ClusterMember"]

log = logging.getLogger("kici.cluster")

RECOVERY_DUTY = "instance-recovery"
MIRROR_SECONDS = 1.0


class ClusterMember:
    """Registration, heartbeat, agent-load mirror and dead-process recovery of one process.

    Args:
        db: the pool (duty locks are held on its connections).
        cluster: the cluster tables.
        instance_id: this process's id (``agents.connected_instance``).
        hub: this process's agents (None: a process without agent sockets).
        version, mode: recorded for ``/cluster/health``.
        heartbeat_s: heartbeat cadence; the recovery duty runs at the same cadence.
        recovery_grace_s: the agents' recovery window given to a dead process's running jobs.
        mirror_s: how often the agents' load is compared with what was last written.
    """

    def __init__(
        self,
        *,
        db: Database,
        cluster: PgCluster,
        instance_id: str,
        hub: AgentHub | None,
        version: str,
        mode: str,
        heartbeat_s: float = 10.0,
        recovery_grace_s: float = 120.0,
        mirror_s: float = MIRROR_SECONDS,
        hostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        self._db = db
        self.cluster = cluster
        self.instance_id = instance_id
        self._hub = hub
        self._version = version
        self._mode = mode
        self._heartbeat = heartbeat_s
        self._grace = recovery_grace_s
        self._mirror_every = mirror_s
        self._hostname = hostname
        self._written: dict[str, AgentLoad] = {}  # agent -> the load last written
        self._unwritten: dict[str, AgentLoad | None] = {}  # changes taken from the hub, not written yet
        self._rewrite = False  # write every agent's load at the next mirror
        self.registered = anyio.Event()

    async def register(self) -> None:
        await self.cluster.register(
            self.instance_id, hostname=self._hostname(), pid=os.getpid(), version=self._version, mode=self._mode
        )
        self._written.clear()  # a new life: write every agent's load again
        self._rewrite = True
        log.info("Cluster instance registered", extra={"instanceId": self.instance_id})

    async def run(self) -> None:
        """Register, then heartbeat, mirror and recover until cancelled; mark the process stopped on the way out."""
        while True:
            try:
                await self.register()
                break
            except errors.Unavailable as exc:
                log.warning("could not register the cluster instance; retrying", extra={"error": str(exc)})
                await anyio.sleep(1.0)
        self.registered.set()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeats)
                tg.start_soon(self._mirror_loop)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5), suppress(errors.Unavailable):
                await self.cluster.stopped(self.instance_id)

    async def _heartbeats(self) -> None:
        while True:
            try:
                await self.beat()
                await self.recover_dead()
            except errors.Unavailable as exc:
                log.warning("cluster heartbeat failed", extra={"error": str(exc)})
            await anyio.sleep(self._heartbeat)

    async def beat(self) -> None:
        """One heartbeat; takes its agents and jobs back if another process declared this one dead meanwhile."""
        if await self.cluster.heartbeat(self.instance_id):
            metrics.set_remote_agents(await self.cluster.remote_agent_count(self.instance_id))
            metrics.cluster_instances.set(await self.cluster.live_count())
            return
        log.warning(
            "this process was taken for dead by another one; taking its agents and jobs back",
            extra={"instanceId": self.instance_id},
        )
        await self.register()
        if self._hub is not None:
            core = self._hub.core
            agents = list(core.agent_ids())
            running = [
                (job, view.agent_id) for a in agents if (view := core.agent(a)) is not None for job in view.active_jobs
            ]
            back = await self.cluster.rejoin(self.instance_id, agents, running)
            log.info("Agents and jobs taken back", extra={"agents": len(agents), "jobs": back})

    async def recover_dead(self) -> int:
        """The ``instance-recovery`` duty: take over the work of dead processes (when this one holds the duty).
        Returns the jobs turned ``recovering``."""
        total = 0
        async with singletons.hold(self._db, RECOVERY_DUTY, self.instance_id) as run:
            if not run:
                return 0
            for dead in await self.cluster.dead(self.instance_id):
                result = await self.cluster.recover(dead, by=self.instance_id, grace_s=self._grace)
                if result is None:
                    continue
                jobs, agents, deliveries = result
                total += jobs
                log.warning(
                    "Recovered the work of a dead orchestrator process",
                    extra={
                        "deadInstance": dead,
                        "recoveringJobs": jobs,
                        "agents": agents,
                        "deliveries": deliveries,
                        "recoveryWindowSeconds": self._grace,
                    },
                )
            await self.cluster.prune()
            run.result = {"recoveringJobs": total}
        return total

    async def mirror(self) -> int:
        """Write the load of local agents that changed (or reconnected) since the last write; returns how many
        were written. Reads only the agents the dispatcher saw change, not every connected agent."""
        if self._hub is not None:
            self._unwritten.update(self._hub.core.load_changes(everything=self._rewrite))
            self._rewrite = False
        changed = [
            (a, load.active_jobs, load.accepting)
            for a, load in self._unwritten.items()
            if load is not None and self._written.get(a) != load
        ]
        if changed:
            await self.cluster.mirror_load(self.instance_id, changed)  # on failure kept for the next mirror
        for agent_id, load in self._unwritten.items():
            if load is None:
                self._written.pop(agent_id, None)
            else:
                self._written[agent_id] = load
        self._unwritten = {}
        return len(changed)

    async def _mirror_loop(self) -> None:
        while True:
            try:
                await self.mirror()
            except errors.Unavailable as exc:
                log.warning("could not mirror the agents' load", extra={"error": str(exc)})
            await anyio.sleep(self._mirror_every)
