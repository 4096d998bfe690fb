"""Registrations, schedule fires and manual runs through the pipeline over fakes, and typed dispatch inputs."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kici_core import inputs, registrations
from kici_core.delivery_records import Delivery
from kici_core.registration_records import Schedule
from kici_core.testing import fakes
from tests.unit.test_services import LOCK, SHA, World, push_payload

pytestmark = pytest.mark.anyio

SCHEDULED: dict[str, Any] = copy.deepcopy(LOCK)
SCHEDULED["workflows"].append(
    {
        "name": "nightly",
        "triggers": [
            {
                "_type": "schedule",
                "cronExpression": "0 3 * * *",
                "timezone": "Europe/Berlin",
                "inputs": {"depth": {"type": "integer", "optional": False, "nullable": False, "default": 2}},
            },
            {
                "_type": "dispatch",
                "types": [],
                "inputs": {
                    "env": {"type": "enum", "values": ["staging", "prod"], "optional": False, "nullable": False}
                },
            },
        ],
        "jobs": [{"_type": "static", "name": "sweep", "needs": [], "steps": [{"name": "s", "run": "true"}]}],
    }
)


async def registered_world() -> tuple[World, fakes.FakeRegistrationStore]:
    w = World()
    store = fakes.FakeRegistrationStore()
    w.pipeline.registrations = store
    await w.setup()
    w.lockfiles.files[("acme/app", SHA)] = json.dumps(SCHEDULED).encode()
    w.lockfiles.files[("acme/app", "main")] = json.dumps(SCHEDULED).encode()
    await w.deliver(push_payload())
    await w.run_once()
    return w, store


async def test_a_default_branch_push_registers_every_workflow_with_its_schedules() -> None:
    _, store = await registered_world()
    regs = {r.workflow_name: r for r in store.registrations.values()}
    assert sorted(regs) == ["ci", "docs", "nightly", "release"]
    nightly = regs["nightly"]
    assert (nightly.sha, nightly.ref, nightly.repo_identifier, nightly.org_id) == (SHA, "main", "acme/app", "acme")
    assert nightly.trigger_types == ("schedule", "dispatch")
    [spec] = nightly.schedules
    assert (spec.trigger_index, spec.cron_expression, spec.timezone) == (0, "0 3 * * *", "Europe/Berlin")


async def test_pushes_elsewhere_do_not_register_and_a_removed_lock_file_unregisters() -> None:
    w = World()
    store = fakes.FakeRegistrationStore()
    w.pipeline.registrations = store
    await w.setup()
    await w.deliver(push_payload(ref="refs/heads/feature"), delivery_id="feature")
    await w.run_once()
    await w.deliver(push_payload(ref="refs/tags/v1"), delivery_id="tag")
    await w.run_once()
    assert store.registrations == {}
    await w.deliver(push_payload(), delivery_id="main")
    await w.run_once()
    assert len(store.registrations) == 3
    del w.lockfiles.files[("acme/app", SHA)]
    await w.deliver(push_payload(), delivery_id="main-again")
    await w.run_once()
    assert store.registrations == {}


async def test_a_schedule_fire_runs_the_registered_workflow_at_the_registered_commit() -> None:
    w, store = await registered_world()
    w.lockfiles.files.clear()  # fires never read the lock file again
    nightly = next(r for r in store.registrations.values() if r.workflow_name == "nightly")
    [schedule] = await store.list_schedules()
    due = datetime(2030, 1, 1, 2, 0, tzinfo=UTC)
    delivery = registrations.schedule_delivery(schedule, scheduled_at=due, received_at=due)
    assert delivery.delivery_id == f"schedule:{schedule.id}:{int(due.timestamp())}"
    await w.inbox.accept(delivery)
    run_ids = await w.run_once()
    assert run_ids is not None and len(run_ids) == 1
    run = w.inbox.runs[run_ids[0]].run
    assert (run.workflow_name, run.sha, run.ref) == ("nightly", SHA, "main")
    assert run.event is not None and run.event["type"] == "schedule"
    payload = run.event["payload"]
    assert isinstance(payload, dict)
    assert payload["cronExpression"] == "0 3 * * *" and payload["registrationId"] == nightly.id
    assert payload["scheduledAt"] == "2030-01-01T02:00:00Z" and payload["inputs"] == {"depth": 2}
    entry = await w.inbox.get("acme", delivery.delivery_id)
    assert entry is not None and entry.status == "processed" and entry.source == "internal"
    assert isinstance(entry.decision_trace, dict) and entry.decision_trace["matchedWorkflows"] == ["nightly"]


async def test_a_fire_of_a_schedule_unregistered_since_creates_nothing() -> None:
    w, store = await registered_world()
    [schedule] = await store.list_schedules()
    store.registrations.clear()
    due = datetime(2030, 1, 1, 2, tzinfo=UTC)
    await w.inbox.accept(registrations.schedule_delivery(schedule, scheduled_at=due, received_at=due))
    assert await w.run_once() == []
    entry = await w.inbox.get("acme", registrations.schedule_delivery_id(schedule.id, due))
    assert entry is not None and entry.error_message == "the schedule's workflow registration no longer exists"


async def test_a_manual_run_gets_its_checked_inputs_and_the_id_it_was_promised() -> None:
    w, _ = await registered_world()
    when = datetime(2030, 1, 1, tzinfo=UTC)
    delivery = registrations.dispatch_delivery(
        org_id="acme",
        delivery_id="dispatch:1",
        routing_key="github:1",
        provider="github",
        repo="acme/app",
        ref="main",
        workflow_name="nightly",
        dispatch_type=None,
        inputs={"env": "prod"},
        run_id="promised",
        requested_by="admin:ops",
        received_at=when,
    )
    await w.inbox.accept(delivery)
    assert await w.run_once() == ["promised"]
    run = w.inbox.runs["promised"].run
    assert run.event is not None and run.event["type"] == "dispatch" and run.ref == "main"
    assert run.event["payload"]["inputs"] == {"env": "prod"}  # type: ignore[index]
    assert run.event["senderUsername"] == "admin:ops"


async def test_a_manual_run_whose_inputs_no_longer_fit_the_lock_file_fails_with_the_path() -> None:
    w, _ = await registered_world()
    await w.inbox.accept(
        Delivery(
            org_id="acme",
            delivery_id="dispatch:2",
            routing_key="github:1",
            event="dispatch",
            action=None,
            source="internal",
            provider="github",
            received_at=datetime(2030, 1, 1, tzinfo=UTC),
            body=json.dumps(
                {
                    "workflowName": "nightly",
                    "ref": "main",
                    "inputs": {"env": "qa"},
                    "runId": "r",
                    "repository": {"full_name": "acme/app"},
                }
            ).encode(),
        )
    )
    assert await w.run_once() == []
    entry = await w.inbox.get("acme", "dispatch:2")
    assert entry is not None and entry.status == "failed"
    assert entry.error_message == "inputs.env: must be one of: staging, prod"


DESCRIPTORS: dict[str, Any] = {
    "name": {"type": "string", "optional": False, "nullable": False, "min": 2, "max": 8, "pattern": "^[a-z-]+$"},
    "count": {"type": "integer", "optional": True, "nullable": False, "min": 1, "max": 5},
    "ratio": {"type": "number", "optional": False, "nullable": True, "default": 0.5},
    "dry": {"type": "boolean", "optional": False, "nullable": False, "default": False},
    "env": {"type": "enum", "values": ["staging", "prod"], "optional": True, "nullable": False},
    "kind": {"type": "literal", "literal": "release", "optional": True, "nullable": False},
}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"name": "web"}, {"name": "web", "ratio": 0.5, "dry": False}),
        (
            {"name": "web", "count": "3", "ratio": "2", "dry": "true", "env": "prod", "kind": "release"},
            {"name": "web", "count": 3, "ratio": 2, "dry": True, "env": "prod", "kind": "release"},
        ),
        (
            {"name": "api-x", "count": 5, "ratio": None, "dry": True},
            {"name": "api-x", "count": 5, "ratio": None, "dry": True},
        ),
    ],
)
def test_inputs_are_converted_to_their_types_and_defaulted(given: dict[str, Any], expected: dict[str, Any]) -> None:
    assert inputs.resolve(DESCRIPTORS, given) == expected


def test_every_input_problem_is_reported_with_its_path() -> None:
    with pytest.raises(inputs.InputErrors) as caught:
        inputs.resolve(
            DESCRIPTORS,
            {"name": "Web!", "count": "2.5", "ratio": "x", "dry": "yes", "env": "qa", "kind": "other", "colour": "red"},
        )
    assert [str(e) for e in caught.value.errors] == [
        "inputs.colour: unknown input (the trigger declares: count, dry, env, kind, name, ratio)",
        "inputs.name: does not match the pattern '^[a-z-]+$'",
        "inputs.count: expected an integer",
        "inputs.ratio: expected a number",
        "inputs.dry: expected a boolean (true or false)",
        "inputs.env: must be one of: staging, prod",
        "inputs.kind: must be 'release'",
    ]
    with pytest.raises(inputs.InputErrors, match=r"inputs\.name: required; inputs\.count: value must be at most 5"):
        inputs.resolve(DESCRIPTORS, {"count": 9})
    with pytest.raises(inputs.InputErrors, match=r"inputs\.name: length must be at least 2"):
        inputs.resolve(DESCRIPTORS, {"name": "a"})
    with pytest.raises(inputs.InputErrors, match=r"inputs\.dry: may not be null"):
        inputs.resolve(DESCRIPTORS, {"name": "ab", "dry": None})


def test_a_schedule_fire_is_one_delivery_per_schedule_and_due_time() -> None:
    schedule = Schedule(
        id="s1",
        registration_id="r1",
        org_id="acme",
        routing_key="generic:acme:x",
        repo_identifier="acme/app",
        workflow_name="nightly",
        trigger_index=0,
        cron_expression="0 3 * * *",
        timezone="UTC",
    )
    due = datetime(2030, 1, 1, 3, tzinfo=UTC)
    first = registrations.schedule_delivery(schedule, scheduled_at=due, received_at=due)
    late = registrations.schedule_delivery(schedule, scheduled_at=due, received_at=datetime(2030, 1, 2, tzinfo=UTC))
    assert first.delivery_id == late.delivery_id  # a retry of the same fire is a duplicate
    assert (first.source, first.event, first.provider) == ("internal", "schedule", "local")


def test_an_upstream_lock_file_registers_its_schedule_with_zone_and_description() -> None:
    from pathlib import Path

    from kici_core import lockfile

    raw = (Path(__file__).parents[1] / "fixtures" / "lockfiles" / "example_c_global.json").read_bytes()
    [reg] = registrations.registrations_from(
        lockfile.parse_lockfile(raw),
        org_id="acme",
        routing_key="github:1",
        provider="github",
        repo="myorg/ci",
        ref="main",
        sha="c" * 40,
        repo_url="https://github.com/myorg/ci.git",
        delivery_id="d",
        ids=lambda: "reg-1",
    )
    assert reg.workflow_name == "org-lint"
    assert reg.trigger_types == ("push", "schedule", "kici_event", "webhook")
    [spec] = reg.schedules
    assert (spec.trigger_index, spec.cron_expression, spec.timezone, spec.description) == (
        1,
        "0 3 * * 1",
        "Europe/Berlin",
        "weekly sweep",
    )
    assert reg.workflow["jobs"][1]["_type"] == "dynamic"  # type: ignore[index]  # kept as written


async def test_schedule_fires_and_manual_runs_are_offloaded_and_capped_like_any_delivery() -> None:
    w, store = await registered_world()
    offloaded: list[str] = []

    async def offload(fn: Any) -> Any:
        offloaded.append(getattr(fn, "__name__", type(fn).__name__))
        return fn()

    w.pipeline.offload = offload
    w.pipeline.max_jobs = 0  # the registered workflow has one job: over the cap
    [schedule] = await store.list_schedules()
    due = datetime(2030, 1, 1, 2, tzinfo=UTC)
    await w.inbox.accept(registrations.schedule_delivery(schedule, scheduled_at=due, received_at=due))
    assert await w.run_once() == []
    fired = await w.inbox.get("acme", registrations.schedule_delivery_id(schedule.id, due))
    assert fired is not None and fired.status == "failed"
    assert fired.error_message is not None and "KICI_MAX_JOBS_PER_DELIVERY" in fired.error_message
    assert "decide" in offloaded, offloaded

    offloaded.clear()
    w.pipeline.max_jobs = 10
    manual = registrations.dispatch_delivery(
        org_id="acme",
        delivery_id="dispatch:cap",
        routing_key="github:1",
        provider="github",
        repo="acme/app",
        ref="main",
        workflow_name="nightly",
        dispatch_type=None,
        inputs={"env": "prod"},
        run_id="capped",
        requested_by="admin:ops",
        received_at=due,
    )
    await w.inbox.accept(manual)
    assert await w.run_once() == ["capped"]
    assert offloaded[0] == "partial" and "decide" in offloaded, offloaded  # the lock-file parse, then matching
