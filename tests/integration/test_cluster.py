"""Several orchestrator processes on one PostgreSQL: registration, heartbeats, the cluster-wide agent view, and
the recovery of a dead process's jobs — against a real database, two pools standing for two processes.

A process "dies" here the way the database sees it: its heartbeat stops (the test ages it with SQL instead of
waiting for the timeout).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kici_adapters.postgres.cluster import PgCluster
from kici_adapters.postgres.concurrency import PgConcurrency
from kici_adapters.postgres.dispatch import PgDispatchQueue
from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.runs import PgRunStore
from kici_core import cluster, routing
from kici_core import dispatch_effects as fx
from kici_core.delivery_records import Delivery
from kici_core.testing import fakes
from kici_runtime.orchestrator.cluster import ClusterMember
from kici_runtime.orchestrator.dispatcher import AgentHub
from tests.integration.test_dispatch_queue import claim, make_run, status
from tests.support.pg import scalar

pytestmark = pytest.mark.anyio
GRACE = 120.0


async def connect(db: Database, agent: str, instance: str, labels: list[str], *, max_concurrency: int = 1) -> None:
    await PgDispatchQueue(db).agent_connected(
        agent_id=agent,
        labels=labels,
        mandatory=[],
        platform="linux",
        arch="x64",
        version="1",
        hostname=agent,
        max_concurrency=max_concurrency,
        token_id=None,
        instance_id=instance,
        metadata={},
    )


def member(db: Database, instance: str) -> ClusterMember:
    return ClusterMember(
        db=db,
        cluster=PgCluster(db, instance_timeout_s=30),
        instance_id=instance,
        hub=None,
        version="0.1.0",
        mode="independent",
        recovery_grace_s=GRACE,
        hostname=lambda: "host",
    )


async def age(db: Database, instance: str) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE cluster_instances SET heartbeat_at = now() - interval '1 hour' WHERE instance_id = %s", (instance,)
        )


async def test_a_dead_process_is_seen_and_its_running_jobs_recovered_by_another(
    database: Database, second_db: Database
) -> None:
    a, b = member(database, "proc-a"), member(second_db, "proc-b")
    await a.register()
    await b.register()
    await connect(database, "a1", "proc-a", ["linux"])
    await connect(database, "a2", "proc-a", ["linux"])
    await connect(second_db, "b1", "proc-b", ["linux"])
    queue = PgDispatchQueue(database)
    _run, ids = await make_run(database, [("running", ["linux"], []), ("unacked", ["linux"], [])])
    try:
        assert await claim(queue, ids["running"], agent_id="a1", ack_deadline=0.0)
        await queue.acks_resolved([(ids["running"], "a1")])
        async with database.connection() as conn:
            await conn.execute("UPDATE execution_jobs SET status = 'running' WHERE job_id = %s", (ids["running"],))
        assert await claim(queue, ids["unacked"], agent_id="a2", ack_deadline=4_000_000_000.0)
    finally:
        await queue.aclose()

    inbox = PgDeliveryInbox(database, fakes.FakeBlobStore())
    await inbox.accept(
        Delivery(
            org_id="acme",
            delivery_id="d-1",
            routing_key="github:1",
            event="push",
            action=None,
            source="direct",
            provider="github",
            body=b"{}",
            received_at=datetime.now(UTC),
        )
    )
    [claimed] = await inbox.claim(worker_id="proc-a/processing-0", limit=1, lease_seconds=600)

    directory = b.cluster
    assert [(x.agent_id, x.instance_id) for x in await directory.agents()] == [
        ("a1", "proc-a"),
        ("a2", "proc-a"),
        ("b1", "proc-b"),
    ]
    assert await b.recover_dead() == 0  # nobody is dead

    await age(database, "proc-a")  # proc-a stops heartbeating
    assert [x.agent_id for x in await directory.agents()] == ["b1"]  # a dead process's agents are not offered
    body = cluster.health(
        me="proc-b",
        instances=await directory.instances(),
        duties=await directory.duties(),
        agents=await directory.agents(),
        active_runs=await directory.active_runs(),
        now=await directory.now(),
        timeout=timedelta(seconds=30),
    )
    assert body["status"] == "degraded"
    assert {i["instanceId"]: i["state"] for i in body["instances"]} == {"proc-a": "dead", "proc-b": "alive"}  # type: ignore[index,union-attr]

    assert await b.recover_dead() == 1
    assert await status(database, "dispatch_queue", "id", ids["running"]) == "recovering"
    assert await status(database, "execution_jobs", "job_id", ids["running"]) == "recovering"
    assert await scalar(database, f"SELECT recovery_agent_id FROM dispatch_queue WHERE id = '{ids['running']}'") == "a1"
    window = await scalar(
        database,
        f"SELECT extract(epoch FROM recovery_deadline - now()) FROM dispatch_queue WHERE id = '{ids['running']}'",
    )
    assert GRACE - 30 < float(window) <= GRACE
    # never acknowledged: left to the ack-deadline sweep, which requeues it
    assert await status(database, "dispatch_queue", "id", ids["unacked"]) == "dispatched"
    assert await scalar(database, "SELECT count(*) FROM agents WHERE connected_instance = 'proc-a'") == 0
    assert await scalar(database, "SELECT recovered_by FROM cluster_instances WHERE instance_id = 'proc-a'") == "proc-b"
    assert await scalar(database, "SELECT instance_id FROM cluster_duties WHERE duty = 'instance-recovery'") == "proc-b"
    assert await b.recover_dead() == 0  # recovered once
    # the delivery the dead process's processing child was working on is claimable again at once
    [again] = await inbox.claim(worker_id="proc-b", limit=1, lease_seconds=600)
    assert again.delivery_id == claimed.delivery_id == "d-1"

    # the agent reconnects to proc-b and reclaims its job (§8.3): nothing is lost and nothing runs twice
    await connect(second_db, "a1", "proc-b", ["linux"])
    queue_b = PgDispatchQueue(second_db)
    try:
        assert [r[0] for r in await queue_b.reclaimable("a1", [ids["running"]])] == [ids["running"]]
        assert await queue_b.reclaim(ids["running"], agent_id="a1")
    finally:
        await queue_b.aclose()
    assert await status(database, "execution_jobs", "job_id", ids["running"]) == "running"


async def test_a_process_taken_for_dead_while_alive_takes_its_work_back(
    database: Database, second_db: Database
) -> None:
    a, b = member(database, "proc-a"), member(second_db, "proc-b")
    await a.register()
    await b.register()
    await connect(database, "a1", "proc-a", ["linux"])
    queue = PgDispatchQueue(database)
    _run, ids = await make_run(database, [("job", ["linux"], [])])
    try:
        assert await claim(queue, ids["job"], agent_id="a1", ack_deadline=0.0)
        await queue.acks_resolved([(ids["job"], "a1")])
    finally:
        await queue.aclose()
    await age(database, "proc-a")  # a long pause: proc-a missed its heartbeats
    assert await b.recover_dead() == 1
    assert not await a.cluster.heartbeat("proc-a")  # proc-a wakes up and learns it was taken for dead
    back = await a.cluster.rejoin("proc-a", ["a1"], [(ids["job"], "a1")])
    assert back == 1
    assert await status(database, "dispatch_queue", "id", ids["job"]) == "dispatched"
    assert await scalar(database, "SELECT connected_instance FROM agents WHERE agent_id = 'a1'") == "proc-a"
    await a.register()
    assert await a.cluster.heartbeat("proc-a")


async def test_why_waiting_sees_the_agents_of_every_process(database: Database, second_db: Database) -> None:
    a, b = member(database, "proc-a"), member(second_db, "proc-b")
    await a.register()
    await b.register()
    await connect(second_db, "gpu-box", "proc-b", ["linux", "gpu"], max_concurrency=2)
    await b.cluster.mirror_load("proc-b", [("gpu-box", 2, True)])
    directory = a.cluster  # asked on proc-a, which holds no agent
    gpu = routing.compile_selector([{"kind": "exact", "value": "gpu"}], [])
    arm = routing.compile_selector([{"kind": "exact", "value": "arm64"}], [])
    assert (await cluster.why_waiting(directory, gpu)).message == "all eligible agents are busy: gpu-box"
    assert (await cluster.why_waiting(directory, arm)).message == "no connected agent has 'arm64'"
    [agent] = await directory.agents()
    assert (agent.instance_id, agent.active_jobs, agent.max_concurrency, agent.free_slots) == ("proc-b", 2, 2, 0)
    os_label = routing.compile_selector([{"kind": "exact", "value": "kici:os:linux"}], [])
    assert (await cluster.why_waiting(directory, os_label)).eligible == ("gpu-box",)  # derived from platform
    await b.cluster.stopped("proc-b")  # a clean stop: its agents are gone from the view at once
    assert await directory.agents() == []


async def test_the_load_mirror_writes_what_changed_on_the_hub_and_everything_after_a_new_life(
    database: Database,
) -> None:
    hub = AgentHub(
        queue=PgDispatchQueue(database),
        runs=PgRunStore(database),
        concurrency=PgConcurrency(database),
        instance_id="proc-a",
    )
    me = ClusterMember(
        db=database,
        cluster=PgCluster(database, instance_timeout_s=30),
        instance_id="proc-a",
        hub=hub,
        version="0.1.0",
        mode="independent",
        hostname=lambda: "host",
    )
    await me.register()
    for name in ("box-1", "box-2", "box-3"):
        await connect(database, name, "proc-a", ["linux"])
        hub.core.agent_registered(
            agent_id=name, connection_id=f"{name}-c", now=0.0, labels=routing.AgentLabels(labels=frozenset({"linux"}))
        )
    async with database.connection() as conn:
        await conn.execute("UPDATE agents SET active_jobs = 7 WHERE agent_id LIKE 'box-%%'")  # stale rows

    async def loads() -> dict[str, int]:
        return {a.agent_id: a.active_jobs for a in await me.cluster.agents()}

    assert await me.mirror() == 3
    assert await loads() == {"box-1": 0, "box-2": 0, "box-3": 0}
    assert await me.mirror() == 0
    linux = routing.compile_selector([{"kind": "exact", "value": "linux"}], [])
    [claim, _send] = hub.core.job_queued(job_id="j1", run_id="r1", selector=linux, created_at=1.0, now=1.0)
    assert claim == fx.MarkDispatched(job_id="j1", agent_id="box-1", ack_deadline=claim.ack_deadline)
    assert await me.mirror() == 1
    assert await loads() == {"box-1": 1, "box-2": 0, "box-3": 0}
    hub.core.job_status(agent_id="box-1", job_id="j1", state="running", now=2.0)
    hub.core.agent_gone(agent_id="box-3", connection_id="box-3-c", now=3.0)
    assert await me.mirror() == 0  # running changes no load; a gone agent's row is not the mirror's
    async with database.connection() as conn:  # as if another process had rewritten the rows meanwhile
        await conn.execute("UPDATE agents SET active_jobs = 5 WHERE agent_id LIKE 'box-%%'")
    await me.register()  # a new life (after being taken for dead): every connected agent is written again
    assert await me.mirror() == 2
    assert await loads() == {"box-1": 1, "box-2": 0, "box-3": 5}
