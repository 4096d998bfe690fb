"""Orchestrator processes sharing one database: ``cluster_instances``, ``cluster_duties`` and the agents' load mirror.

:class:`PgCluster` is the :class:`~kici_core.ports.ClusterDirectory` adapter (what every process can read) plus
what a process writes about itself: its registration and heartbeat, the load of the agents it holds, and, for
the ``instance-recovery`` duty, the takeover of a dead process's work. Liveness is judged with the database's
clock (``now()``), the clock heartbeats are written with, so processes on hosts with skewed clocks agree.

Recovering a dead process (:meth:`PgCluster.recover`) is one transaction: claim the instance row (only while its
heartbeat is still overdue and nobody recovered it), turn the rows its agents were running (``dispatched``, acked
or reported running) into ``recovering`` with a deadline of now + the agents' recovery window, mark its agents
disconnected, and free the inbox leases of deliveries it (or its processing children) was processing, so another
process processes them at once instead of when the lease expires (processing is idempotent: at most one run per
delivery and workflow). An agent that reconnects to any process within the window reclaims its job (§8.3); otherwise the
dispatch sweep fails it with the recovery-window reason. Rows it dispatched but that were never acknowledged are
left to the ack-deadline sweep, which requeues them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kici_adapters.postgres import notify, queries
from kici_adapters.postgres.pool import Database
from kici_core.cluster import ClusterAgent, DutyInfo, InstanceInfo

_SQL = queries.load("cluster.sql")

__all__ = ["PgCluster"]


def _instance(r: Any) -> InstanceInfo:
    return InstanceInfo(
        instance_id=r["instance_id"],
        hostname=r["hostname"],
        pid=r["pid"],
        version=r["version"],
        mode=r["mode"],
        started_at=r["started_at"],
        heartbeat_at=r["heartbeat_at"],
        stopped_at=r["stopped_at"],
        recovered_at=r["recovered_at"],
        recovered_by=r["recovered_by"],
    )


def _agent(r: Any) -> ClusterAgent:
    return ClusterAgent(
        agent_id=r["agent_id"],
        instance_id=r["connected_instance"],
        labels=tuple(r["labels"]),
        mandatory_labels=tuple(r["mandatory_labels"]),
        max_concurrency=int(r["max_concurrency"]),
        active_jobs=int(r["active_jobs"]),
        accepting=bool(r["accepting"]),
        hostname=r["hostname"],
        platform=r["platform"],
        arch=r["arch"],
        version=r["version"],
        connected_at=r["connected_at"],
    )


class PgCluster:
    """The cluster tables (see the module docstring).

    Args:
        db: the pool.
        instance_timeout_s: a process whose heartbeat is older than this is dead.
    """

    def __init__(self, db: Database, *, instance_timeout_s: float = 30.0) -> None:
        self._db = db
        self.instance_timeout_s = instance_timeout_s

    # ------------------------------------------------------------------------------------ ClusterDirectory
    async def agents(self) -> list[ClusterAgent]:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["live_agents"], {"t": self.instance_timeout_s})
            return [_agent(r) for r in await cur.fetchall()]

    async def remote_agent_count(self, me: str) -> int:
        """Agents connected to live processes other than ``me``."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["live_agents_elsewhere"], {"t": self.instance_timeout_s, "me": me})
            row = await cur.fetchone()
            return int(row["n"]) if row else 0

    async def live_count(self) -> int:
        """Processes whose heartbeat is current and that did not stop."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["live_instances_count"], {"t": self.instance_timeout_s})
            row = await cur.fetchone()
            return int(row["n"]) if row else 0

    async def instances(self) -> list[InstanceInfo]:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["instances"])
            return [_instance(r) for r in await cur.fetchall()]

    async def duties(self) -> list[DutyInfo]:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["duties"])
            return [
                DutyInfo(duty=r["duty"], instance_id=r["instance_id"], last_run_at=r["last_run_at"])
                for r in await cur.fetchall()
            ]

    async def active_runs(self) -> int:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["active_runs_count"])
            row = await cur.fetchone()
            return int(row["n"]) if row else 0

    async def now(self) -> datetime:
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["db_now"])
            row = await cur.fetchone()
            assert row is not None
            return row["now"]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------------ this process
    async def register(self, instance_id: str, *, hostname: str, pid: int, version: str, mode: str) -> None:
        """Record this process as alive (a restart under the same id starts a new life)."""
        async with self._db.connection() as conn:
            await conn.execute(
                _SQL["instance_register"],
                {"id": instance_id, "host": hostname, "pid": pid, "version": version, "mode": mode},
            )

    async def heartbeat(self, instance_id: str) -> bool:
        """Refresh this process's heartbeat. False when another process declared it dead and took its work over
        (or its row is gone): the caller then re-registers and reclaims what it still runs."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["instance_heartbeat"], {"id": instance_id})
            row = await cur.fetchone()
            return bool(row and row["ok"])

    async def stopped(self, instance_id: str) -> None:
        """A clean shutdown: the row stays (``stopped``) until pruned."""
        async with self._db.connection() as conn:
            await conn.execute(_SQL["instance_stopped"], {"id": instance_id})

    async def mirror_load(self, instance_id: str, loads: Sequence[tuple[str, int, bool]]) -> None:
        """Write ``(agent_id, active_jobs, accepting)`` of agents this process holds, in one statement."""
        if not loads:
            return
        async with self._db.connection() as conn:
            await conn.execute(
                _SQL["agents_load_mirror"],
                {
                    "ids": [x[0] for x in loads],
                    "n": [x[1] for x in loads],
                    "acc": [x[2] for x in loads],
                    "me": instance_id,
                },
            )

    async def rejoin(self, instance_id: str, agents: Sequence[str], running: Sequence[tuple[str, str]]) -> int:
        """After being declared dead while alive: name this process again as the host of ``agents`` (those no
        other process holds) and take back ``(job_id, agent_id)`` rows turned ``recovering`` meanwhile. Returns
        the rows taken back."""
        async with self._db.transaction() as conn:
            await conn.execute(_SQL["agents_rejoin"], {"me": instance_id, "ids": list(agents)})
            cur = await conn.execute(
                _SQL["queue_rejoin"], {"jobs": [r[0] for r in running], "agents": [r[1] for r in running]}
            )
            back = [r["id"] for r in await cur.fetchall()]
            if back:
                await conn.execute(_SQL["jobs_rejoin"], {"ids": back})
            return len(back)

    # ------------------------------------------------------------------------------------ instance-recovery duty
    async def dead(self, me: str) -> list[str]:
        """Processes other than ``me`` whose heartbeat is overdue and whose work nobody recovered yet."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["dead_instances"], {"me": me, "t": self.instance_timeout_s})
            return [r["instance_id"] for r in await cur.fetchall()]

    async def recover(self, dead: str, *, by: str, grace_s: float) -> tuple[int, int, int] | None:
        """Take over the work of the dead process ``dead`` (see the module docstring). Returns ``(jobs turned
        recovering, agents marked disconnected, deliveries freed)``, or None when it is no longer dead or was
        recovered already."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                _SQL["instance_recover"], {"dead": dead, "me": by, "t": self.instance_timeout_s, "grace": grace_s}
            )
            row = await cur.fetchone()
            if row is not None and row["deliveries"]:
                await notify.notify(conn, notify.INBOX)
        if row is None or not row["claimed"]:
            return None
        return int(row["jobs"]), int(row["agents"]), int(row["deliveries"])

    async def prune(self, *, older_than_s: float = 86_400.0) -> int:
        """Forget processes stopped or recovered more than ``older_than_s`` ago."""
        async with self._db.connection() as conn:
            cur = await conn.execute(_SQL["instances_prune"], {"s": older_than_s})
            return cur.rowcount
