"""Every frame the orchestrator sends to the Platform, and their field rules (spec §2.3, §2.4, §2.7).

Link frames, sent directly by the relay client: ``auth.request``, ``heartbeat``, ``source.register``,
``source.deregister``, ``webhook.ack`` and the ``dashboard.*.response`` refusal.

Buffered frames: the outbox stores domain events (``kici_core.platform_events``); :func:`frame` turns a stored row into
its
frame just before it is sent: ``run_status`` → ``execution.status``, ``job_status`` → ``job.status.forward``,
``step_status`` → ``step.status.forward``, ``log_lines`` → ``log.chunk``, ``delivery_decided`` →
``execution.event`` (``started``). Rows written by an older release hold frames (their kind is the frame
type); they pass through :func:`finish` unchanged otherwise.

``finish(message, message_id=..., timestamp_ms=...)`` is applied to every frame: it adds a ``messageId`` and
an epoch-ms ``timestamp`` when missing, omits ``None`` in fields that are not nullable, drops tenant fields,
truncates strings to their bounds and caps label lists, so the Platform's schema accepts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kici_adapters.platform.protocol import PROTOCOL_VERSION, AckResult, PlatformSource
from kici_core import platform_events as pe
from kici_core.jsontypes import JSONObject, JSONValue


# --------------------------------------------------------------------------------------------- link frames
def auth_request(token: str, *, role: str = "coordinator") -> JSONObject:
    """The first frame on every connection."""
    return {
        "type": "auth.request",
        "token": token,
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {"orchRole": role, "supportedDashboardRequests": []},
    }


def heartbeat(now_ms: int) -> JSONObject:
    """``{"type": "heartbeat", "timestamp": <ms>}``."""
    return {"type": "heartbeat", "timestamp": now_ms}


def _source(source: PlatformSource) -> JSONObject:
    """One entry of ``source.register.sources``; ``slug`` only when non-empty."""
    out: dict[str, JSONValue] = {
        "provider": source.provider,
        "routingKey": source.routing_key,
        "name": source.name,
        "subtype": source.subtype,
    }
    if source.slug:
        out["slug"] = source.slug
    return out


def source_register(
    message_id: str, sources: Sequence[PlatformSource], *, mode: str, version: str, instance_id: str | None = None
) -> JSONObject:
    """A ``source.register`` carrying ``sources`` (may be empty)."""
    out: dict[str, JSONValue] = {
        "type": "source.register",
        "messageId": message_id,
        "sources": [_source(s) for s in sources],
        "mode": mode,
        "version": version,
    }
    if instance_id:
        out["instanceId"] = instance_id
    return out


def source_deregister(message_id: str, routing_keys: Sequence[str]) -> JSONObject:
    """A ``source.deregister`` for ``routing_keys``."""
    return {"type": "source.deregister", "messageId": message_id, "routingKeys": list(routing_keys)}


def webhook_ack(
    message_id: str, delivery_id: str, result: AckResult, reason: str | None = None, *, duplicate: bool = False
) -> JSONObject:
    """A ``webhook.ack``; ``result`` is always present (``duplicate`` only when true)."""
    out: dict[str, JSONValue] = {
        "type": "webhook.ack",
        "messageId": message_id,
        "deliveryId": delivery_id,
        "result": result,
    }
    if reason is not None:
        out["reason"] = reason
    if duplicate:
        out["duplicate"] = True
    return out


def dashboard_unsupported(frame: Mapping[str, JSONValue]) -> JSONObject | None:
    """The reply to a ``dashboard.*`` request carrying a ``requestId`` (none is implemented), else None."""
    mtype = frame.get("type")
    request_id = frame.get("requestId")
    if not isinstance(mtype, str) or not mtype.startswith("dashboard.") or mtype.endswith(".response"):
        return None
    if not isinstance(request_id, str) or not request_id:
        return None
    return {
        "type": f"{mtype}.response",
        "requestId": request_id,
        "error": f"{mtype} is not supported",
        "code": "unsupported_request_type",
        "requestType": mtype,
    }


# --------------------------------------------------------------------------------------------- buffered frames
TENANT_FIELDS = ("orgId", "org_id", "customerId", "tenantId")

_NULLABLE: dict[str, frozenset[str]] = {
    "execution.status": frozenset(
        {
            "parentRunId",
            "originalRunId",
            "triggeredBy",
            "triggerActorProvider",
            "triggerActorUserId",
            "triggerActorUsername",
        }
    ),
    "job.status.forward": frozenset({"errorMessage", "agentId", "orchestratorId"}),
}

_SHORT = 128
_BOUNDS: dict[str, dict[str, int]] = {
    "execution.status": {
        "messageId": _SHORT,
        "runId": _SHORT,
        "workflowName": _SHORT,
        "repoIdentifier": 256,
        "repoProvider": _SHORT,
        "sha": _SHORT,
        "ref": _SHORT,
        "triggerEvent": _SHORT,
        "commitMessage": 2000,
        "parentRunId": _SHORT,
        "originalRunId": _SHORT,
        "triggeredBy": _SHORT,
        "triggerActorProvider": _SHORT,
        "triggerActorUserId": _SHORT,
        "triggerActorUsername": 256,
        "failureReason": 2000,
    },
    "job.status.forward": {
        "messageId": _SHORT,
        "runId": _SHORT,
        "jobId": _SHORT,
        "jobName": _SHORT,
        "errorMessage": 2000,
        "agentId": _SHORT,
        "orchestratorId": _SHORT,
    },
    "step.status.forward": {
        "messageId": _SHORT,
        "runId": _SHORT,
        "jobId": _SHORT,
        "jobName": _SHORT,
        "stepName": 256,
        "groupId": _SHORT,
    },
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


def _put(out: dict[str, JSONValue], key: str, value: JSONValue) -> None:
    if value is not None:
        out[key] = value


def event_frame(event: pe.PlatformEvent) -> JSONObject:
    """The frame of ``event`` before :func:`finish` (no ``messageId``/``timestamp`` yet)."""
    out: dict[str, JSONValue]
    if isinstance(event, pe.RunStatusChanged):
        out = {
            "type": "execution.status",
            "runId": event.run_id,
            "workflowName": event.workflow_name,
            "status": event.status,
        }
        for key, value in (
            ("repoIdentifier", event.repo_identifier),
            ("repoProvider", event.repo_provider),
            ("sha", event.sha),
            ("ref", event.ref),
            ("triggerEvent", event.trigger_event),
            ("jobCount", event.job_count),
            ("startedAt", event.started_at_ms),
            ("completedAt", event.completed_at_ms),
            ("durationMs", event.duration_ms),
            ("logBytes", event.log_bytes),
            ("failureReason", event.failure_reason),
        ):
            _put(out, key, value)
        return out
    if isinstance(event, pe.JobStatusChanged):
        out = {
            "type": "job.status.forward",
            "runId": event.run_id,
            "jobId": event.job_id,
            "jobName": event.job_name,
            "status": event.status,
            "agentId": event.agent_id,
            "orchestratorId": event.orchestrator_id,
            "runsOnLabels": list(event.runs_on_labels),
        }
        if event.matrix_values:
            out["matrixValues"] = event.matrix_values
        for key, value in (
            ("startedAt", event.started_at_ms),
            ("completedAt", event.completed_at_ms),
            ("durationMs", event.duration_ms),
            ("errorMessage", event.error_message),
            ("logBytes", event.log_bytes),
        ):
            _put(out, key, value)
        return out
    if isinstance(event, pe.StepStatusChanged):
        out = {
            "type": "step.status.forward",
            "runId": event.run_id,
            "jobId": event.job_id,
            "jobName": event.job_name,
            "stepIndex": event.step_index,
            "stepName": event.step_name,
            "state": event.state,
        }
        if event.data:
            out["data"] = event.data
        _put(out, "secretsAccessed", event.secrets_accessed)
        _put(out, "concurrencyKind", event.concurrency_kind)
        _put(out, "groupId", event.group_id)
        return out
    if isinstance(event, pe.LogLines):
        return {
            "type": "log.chunk",
            "runId": event.run_id,
            "jobId": event.job_id,
            "stepIndex": event.step_index,
            "lines": list(event.lines),
        }
    return {
        "type": "execution.event",
        "runId": event.trace_id,
        "event": "started",
        "data": {
            "deliveryId": event.delivery_id,
            "webhookEvent": event.webhook_event,
            "action": event.action,
            "repoIdentifier": event.repo_identifier,
            "ref": event.ref,
            "matchedWorkflows": event.matched_workflows,
            "totalWorkflows": event.total_workflows,
            "decisions": list(event.decisions),
        },
    }


def frame(kind: str, payload: Mapping[str, JSONValue], *, message_id: str, timestamp_ms: int) -> JSONObject:
    """The frame to send for one outbox row ``(kind, payload)``: a domain event's frame, or (rows of an older
    release, messages stored as frames) the stored frame, finished."""
    event = pe.from_record(kind, payload)
    if event is not None:
        return finish(event_frame(event), message_id=message_id, timestamp_ms=timestamp_ms)
    stored = payload if isinstance(payload.get("type"), str) else {**payload, "type": kind}
    return finish(stored, message_id=message_id, timestamp_ms=timestamp_ms)
