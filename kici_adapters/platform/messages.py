"""Field rules for messages forwarded to the Platform (spec §2.4, §2.7).

``finish(message, message_id=..., timestamp_ms=...)`` is applied to every outbox row just before it is sent:
it adds a ``messageId`` and an epoch-ms ``timestamp`` when missing, omits ``None`` in fields that are not
nullable, drops tenant fields, truncates strings to their bounds and caps label lists, so whatever a
producer wrote, the Platform's schema accepts it.
"""

from __future__ import annotations

from collections.abc import Mapping

from kici_core.jsontypes import JSONObject, JSONValue

TENANT_FIELDS = ("orgId", "org_id", "customerId", "tenantId")

_NULLABLE: dict[str, frozenset[str]] = {
    "execution.status": frozenset({"parentRunId", "originalRunId", "triggeredBy", "triggerActorProvider",
                                   "triggerActorUserId", "triggerActorUsername"}),
    "job.status.forward": frozenset({"errorMessage", "agentId", "orchestratorId"}),
}

_SHORT = 128
_BOUNDS: dict[str, dict[str, int]] = {
    "execution.status": {"messageId": _SHORT, "runId": _SHORT, "workflowName": _SHORT, "repoIdentifier": 256,
                         "repoProvider": _SHORT, "sha": _SHORT, "ref": _SHORT, "triggerEvent": _SHORT,
                         "commitMessage": 2000, "parentRunId": _SHORT, "originalRunId": _SHORT,
                         "triggeredBy": _SHORT, "triggerActorProvider": _SHORT, "triggerActorUserId": _SHORT,
                         "triggerActorUsername": 256, "failureReason": 2000},
    "job.status.forward": {"messageId": _SHORT, "runId": _SHORT, "jobId": _SHORT, "jobName": _SHORT,
                           "errorMessage": 2000, "agentId": _SHORT, "orchestratorId": _SHORT},
    "step.status.forward": {"messageId": _SHORT, "runId": _SHORT, "jobId": _SHORT, "jobName": _SHORT,
                            "stepName": 256, "groupId": _SHORT},
    "execution.event": {"messageId": _SHORT, "runId": _SHORT},
    "log.chunk": {"messageId": _SHORT, "runId": _SHORT, "jobId": _SHORT},
}
_LISTS = {"runsOnLabels", "environments", "secretsAccessed"}
_MAX_ITEMS = 30


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def finish(message: Mapping[str, JSONValue], *, message_id: str, timestamp_ms: int) -> JSONObject:
    """The wire form of one forwarded message (see the module docstring).

    Args:
        message: what the producer stored (must carry ``type``).
        message_id: a fresh UUID, used when the message has none.
        timestamp_ms: epoch milliseconds, used when the message has no ``timestamp``.
    """
    mtype = message.get("type")
    kind = mtype if isinstance(mtype, str) else ""
    nullable = _NULLABLE.get(kind, frozenset())
    bounds = _BOUNDS.get(kind, {})
    out: dict[str, JSONValue] = {}
    for key, value in message.items():
        if key in TENANT_FIELDS:
            continue
        if value is None and key not in nullable:
            continue
        if isinstance(value, str) and key in bounds:
            value = _truncate(value, bounds[key])
        elif key in _LISTS and isinstance(value, list):
            value = [_truncate(v, _SHORT) for v in value if isinstance(v, str)][:_MAX_ITEMS]
        out[key] = value
    if not isinstance(out.get("messageId"), str) or not out["messageId"]:
        out["messageId"] = message_id
    if kind == "source.register" or kind == "source.deregister":
        return out  # no timestamp field in these
    if not isinstance(out.get("timestamp"), (int, float)) or isinstance(out.get("timestamp"), bool):
        out["timestamp"] = timestamp_ms
    return out
