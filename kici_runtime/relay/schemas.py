"""Checks recorded orchestrator → Platform messages against the Platform's field rules.

Only the five forwarded execution types are checked field by field (required fields, no ``null`` where the
field is not nullable, enums, string and list bounds). A problem never rejects a message: it is recorded
next to it, so tests can assert that an orchestrator speaks the protocol exactly. In strict mode the relay
closes the connection with 4003 instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from kici_core.jsontypes import JSONValue

FORWARDED_TYPES: tuple[str, ...] = (
    "execution.status",
    "job.status.forward",
    "step.status.forward",
    "execution.event",
    "log.chunk",
)

_RUN_STATUSES = ("pending", "running", "success", "failed", "cancelled", "cancelling", "held")
_JOB_STATUSES = (
    "pending", "queued", "running", "recovering", "cancelling", "success", "failed", "cancelled",
    "skipped", "timed_out_stale", "drift_dropped",
)  # fmt: skip
_STEP_STATES = ("running", "success", "failed", "skipped", "pending", "cancelled")
_EVENT_KINDS = ("started", "job_dispatched", "job_completed", "finished")
_CONCURRENCY = ("sequential", "parallel-child", "parallel-group")


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One field rule: ``kind`` is str, number, int, bool, object, strings or lines."""

    name: str
    kind: str
    required: bool = False
    nullable: bool = False
    max_len: int | None = None
    max_items: int | None = None
    enum: tuple[str, ...] = ()


def _f(
    name: str,
    kind: str,
    *,
    required: bool = False,
    nullable: bool = False,
    max_len: int | None = None,
    max_items: int | None = None,
    enum: tuple[str, ...] = (),
) -> Field:
    return Field(
        name=name,
        kind=kind,
        required=required,
        nullable=nullable,
        max_len=max_len,
        max_items=max_items,
        enum=enum,
    )


_INIT_FAILURE = _f("initFailure", "object")

RULES: dict[str, tuple[Field, ...]] = {
    "execution.status": (
        _f("messageId", "str", required=True, max_len=128),
        _f("runId", "str", required=True, max_len=128),
        _f("workflowName", "str", required=True, max_len=128),
        _f("status", "str", required=True, enum=_RUN_STATUSES),
        _f("repoIdentifier", "str", max_len=256),
        _f("repoProvider", "str", max_len=128),
        _f("localWorkingTree", "bool"),
        _f("sha", "str", max_len=128),
        _f("ref", "str", max_len=128),
        _f("triggerEvent", "str", max_len=128),
        _f("commitMessage", "str", max_len=2000),
        _f("jobCount", "number"),
        _f("startedAt", "number", required=True),
        _f("completedAt", "number"),
        _f("durationMs", "number"),
        _f("timestamp", "number", required=True),
        _f("parentRunId", "str", nullable=True, max_len=128),
        _f("originalRunId", "str", nullable=True, max_len=128),
        _f("triggeredBy", "str", nullable=True, max_len=128),
        _f("triggerActorProvider", "str", nullable=True, max_len=128),
        _f("triggerActorUserId", "str", nullable=True, max_len=128),
        _f("triggerActorUsername", "str", nullable=True, max_len=256),
        _f("failureReason", "str", max_len=2000),
        _f("logBytes", "int"),
        _INIT_FAILURE,
    ),
    "job.status.forward": (
        _f("messageId", "str", required=True, max_len=128),
        _f("runId", "str", required=True, max_len=128),
        _f("jobId", "str", required=True, max_len=128),
        _f("jobName", "str", required=True, max_len=128),
        _f("status", "str", required=True, enum=_JOB_STATUSES),
        _f("matrixValues", "object"),
        _f("startedAt", "number"),
        _f("completedAt", "number"),
        _f("durationMs", "number"),
        _f("errorMessage", "str", nullable=True, max_len=2000),
        _f("agentId", "str", nullable=True, max_len=128),
        _f("orchestratorId", "str", nullable=True, max_len=128),
        _f("runsOnLabels", "strings", max_items=30, max_len=128),
        _f("environments", "strings", max_items=30, max_len=128),
        _f("logBytes", "int"),
        _f("timestamp", "number", required=True),
        _INIT_FAILURE,
    ),
    "step.status.forward": (
        _f("messageId", "str", required=True, max_len=128),
        _f("runId", "str", required=True, max_len=128),
        _f("jobId", "str", required=True, max_len=128),
        _f("jobName", "str", required=True, max_len=128),
        _f("stepIndex", "number", required=True),
        _f("stepName", "str", required=True, max_len=256),
        _f("state", "str", required=True, enum=_STEP_STATES),
        _f("timestamp", "number", required=True),
        _f("data", "object"),
        _f("secretsAccessed", "strings", max_items=30, max_len=128),
        _f("concurrencyKind", "str", enum=_CONCURRENCY),
        _f("groupId", "str", max_len=128),
    ),
    "execution.event": (
        _f("messageId", "str", required=True, max_len=128),
        _f("runId", "str", required=True, max_len=128),
        _f("event", "str", required=True, enum=_EVENT_KINDS),
        _f("data", "object", required=True),
        _f("timestamp", "number", required=True),
    ),
    "log.chunk": (
        _f("messageId", "str", required=True, max_len=128),
        _f("runId", "str", required=True, max_len=128),
        _f("jobId", "str", required=True, max_len=128),
        _f("stepIndex", "number", required=True),
        _f("lines", "lines", required=True),
        _f("timestamp", "number", required=True),
    ),
}

_TENANT_FIELDS = ("orgId", "customerId", "tenantId")


def check_message(message: dict[str, JSONValue]) -> list[str]:
    """Problems with a forwarded message, as human-readable strings; empty when it is well formed.

    Types other than the five forwarded ones are not checked (an empty list).
    """
    mtype = message.get("type")
    rules = RULES.get(mtype) if isinstance(mtype, str) else None
    if rules is None:
        return []
    problems: list[str] = []
    for rule in rules:
        if rule.name not in message:
            if rule.required:
                problems.append(f"{rule.name}: required field missing")
            continue
        problems.extend(_check_value(rule, message[rule.name]))
    problems.extend(f"{name}: tenant fields must not appear on status messages" for name in _TENANT_FIELDS
                    if name in message)  # fmt: skip
    if mtype == "job.status.forward" and "logBytes" in message and message.get("status") not in _TERMINAL_JOB:
        problems.append("logBytes: only allowed on terminal job states")
    return problems


_TERMINAL_JOB = ("success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped")


def _check_value(rule: Field, value: JSONValue) -> list[str]:
    name = rule.name
    if value is None:
        return [] if rule.nullable else [f"{name}: null is not allowed (omit the field instead)"]
    if rule.kind == "str":
        if not isinstance(value, str):
            return [f"{name}: expected a string"]
        out = []
        if rule.max_len is not None and len(value) > rule.max_len:
            out.append(f"{name}: longer than {rule.max_len} characters")
        if rule.enum and value not in rule.enum:
            out.append(f"{name}: {value!r} is not one of {', '.join(rule.enum)}")
        return out
    if rule.kind in ("number", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return [f"{name}: expected a number"]
        if rule.kind == "int" and (not float(value).is_integer() or value < 0):
            return [f"{name}: expected a non-negative integer"]
        return []
    if rule.kind == "bool":
        return [] if isinstance(value, bool) else [f"{name}: expected a boolean"]
    if rule.kind == "object":
        return [] if isinstance(value, dict) else [f"{name}: expected an object"]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return [f"{name}: expected a list of strings"]
    out = []
    if rule.max_items is not None and len(value) > rule.max_items:
        out.append(f"{name}: more than {rule.max_items} items")
    if rule.max_len is not None and any(len(str(v)) > rule.max_len for v in value):
        out.append(f"{name}: an item is longer than {rule.max_len} characters")
    return out
