"""Agent wire messages (agent-protocol spec §4): validation of what agents send, builders for what we send.

Incoming frames are untrusted JSON. :func:`parse_frame` turns text into an object or raises
:class:`InvalidFrame`; the pydantic models below check the core message shapes (unknown fields are
ignored, as upstream does). Outgoing ``job.dispatch`` messages are checked against §4.2.6 before they are
sent (:func:`check_dispatch`), including the ``token`` / ``sourceAuth`` cross-field rule.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kici_core.jsontypes import JSONValue

__all__ = [
    "AUTH_REQUEST",
    "EXTENDED_REPLIES",
    "KNOWN_TYPES",
    "AgentRegister",
    "AuthRequest",
    "InvalidFrame",
    "InvalidMessage",
    "check_dispatch",
    "extended_reply",
    "field_paths",
    "parse_frame",
    "validate",
]

AUTH_REQUEST = "auth.request"

# jobConfig keys that may carry secrets: never sent inside jobConfig (§4.2.6).
STRIPPED_JOB_CONFIG_KEYS = (
    "secrets",
    "namespacedSecrets",
    "runPublicKey",
    "npmRegistries",
    "installEnvSecrets",
    "workflowRoutingKey",
    "workflowProviderContext",
)


class InvalidFrame(ValueError):
    """The frame is not a JSON object (closes 4003 ``Malformed JSON``)."""


class InvalidMessage(ValueError):
    """The message does not match its schema or has an unknown type (closes 4003 ``Invalid message``)."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class AuthRequest(_Msg):
    type: Literal["auth.request"]
    token: str = Field(min_length=1)
    protocolVersion: int = Field(gt=0)


class InFlightJob(_Msg):
    jobId: str
    runId: str


class AgentRegister(_Msg):
    type: Literal["agent.register"]
    messageId: str
    agentId: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")  # no control characters
    labels: list[str]
    platform: str | None = None
    arch: str | None = None
    version: str | None = None
    maxConcurrency: int | None = Field(default=None, gt=0, le=10_000)
    inFlightJobs: list[InFlightJob] = Field(default_factory=list)
    hostname: str | None = None
    osRelease: str | None = None
    osVersion: str | None = None
    totalMemoryMb: float | None = None
    cpuCount: float | None = None
    nodeVersion: str | None = None
    runningAsUser: str | None = None
    runningAsUid: float | None = None
    properties: dict[str, str | float | bool] | None = None


class JobAck(_Msg):
    type: Literal["job.ack"]
    messageId: str
    runId: str
    jobId: str
    timestamp: float


class JobReject(_Msg):
    type: Literal["job.reject"]
    messageId: str
    runId: str
    jobId: str
    reason: Literal["busy", "draining"]
    timestamp: float


JobState = Literal[
    "pending",
    "queued",
    "running",
    "recovering",
    "cancelling",
    "success",
    "failed",
    "cancelled",
    "skipped",
    "timed_out_stale",
    "drift_dropped",
]
StepState = Literal["running", "success", "failed", "skipped", "pending", "cancelled"]


class JobStatusMsg(_Msg):
    type: Literal["job.status"]
    messageId: str
    runId: str
    jobId: str
    state: JobState
    timestamp: float
    data: dict[str, Any] | None = None


class StepStatusMsg(_Msg):
    type: Literal["step.status"]
    messageId: str
    runId: str
    jobId: str
    stepIndex: int = Field(ge=0)
    stepName: str
    state: StepState
    timestamp: float
    data: dict[str, Any] | None = None
    step_type: str | None = None
    secretsAccessed: list[str] | None = None
    logBytesStreamed: int | None = Field(default=None, ge=0)


class JobHeartbeat(_Msg):
    type: Literal["job.heartbeat"]
    runId: str
    jobId: str
    timestamp: float


class AgentStatus(_Msg):
    type: Literal["agent.status"]
    messageId: str
    agentId: str
    activeJobs: float
    memoryUsedMb: float | None = None
    memoryAvailableMb: float | None = None
    uptimeSeconds: float | None = None


class ConfigAck(_Msg):
    type: Literal["config.ack"]
    messageId: str
    agentId: str


class AgentLog(_Msg):
    type: Literal["agent.log"]
    messageId: str
    agentId: str
    lines: list[str]
    timestamp: float


_MODELS: dict[str, type[_Msg]] = {
    "agent.register": AgentRegister,
    "job.ack": JobAck,
    "job.reject": JobReject,
    "job.status": JobStatusMsg,
    "step.status": StepStatusMsg,
    "job.heartbeat": JobHeartbeat,
    "agent.status": AgentStatus,
    "config.ack": ConfigAck,
    "agent.log": AgentLog,
}

# Request/response extended features we do not implement: the fail-closed reply (§4.4), built from the
# field holding the correlation id.
EXTENDED_REPLIES: dict[str, tuple[str, dict[str, JSONValue]]] = {
    "cache.upload.request": ("messageId", {"type": "cache.upload.response", "uploadUrl": ""}),
    "cache.user.restore.request": ("messageId", {"type": "cache.user.restore.response", "hit": False}),
    "cache.user.save.request": ("messageId", {"type": "cache.user.save.response", "skip": True}),
    "provenance.upload.request": ("messageId", {"type": "provenance.upload.response", "uploadUrl": ""}),
    "event.emit": ("requestId", {"type": "event.emit.response", "error": "Event routing not available"}),
    "agent.api.request": ("requestId", {"type": "agent.api.response", "error": "Agent API not available"}),
    "step.approval-request": (
        "messageId",
        {
            "type": "step.approval-resolved",
            "outcome": "rejected",
            "reason": "Approvals not available on this orchestrator",
        },
    ),
}
_ACCEPT_AND_DROP = frozenset(
    {
        "cache.upload.complete",
        "cache.user.save.complete",
        "provenance.upload.complete",
        "agent.metrics",
        "fleet.bundle.chunk",
        "fleet.bundle.error",
        "run.event",
        "job.context",
    }
)
CONCURRENCY_REPORT = "job.concurrency.report"
"""Answered by the dispatcher (workflow concurrency groups), not with a fixed reply."""
KNOWN_TYPES = frozenset({*_MODELS, *EXTENDED_REPLIES, *_ACCEPT_AND_DROP, "heartbeat", "log.chunk", CONCURRENCY_REPORT})


def parse_frame(text: str) -> dict[str, Any]:
    """Decode one text frame into a JSON object.

    Raises:
        InvalidFrame: not JSON, or not an object with a string ``type``.
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidFrame("Malformed JSON") from exc
    if not isinstance(value, dict):
        raise InvalidFrame("Malformed JSON")
    return value


def _check_log_chunk(msg: dict[str, Any]) -> None:
    for key in ("messageId", "runId", "jobId"):
        if not isinstance(msg.get(key), str):
            raise InvalidMessage(f"log.chunk: {key}")
    index = msg.get("stepIndex")
    if isinstance(index, bool) or not isinstance(index, int | float) or index != int(index):
        raise InvalidMessage("log.chunk: stepIndex")
    lines = msg.get("lines")
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise InvalidMessage("log.chunk: lines")
    ts = msg.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidMessage("log.chunk: timestamp")


def validate(msg: dict[str, Any]) -> _Msg | None:
    """Check a registered agent's message. Returns the parsed model for modelled types, ``None`` for the
    types checked by hand (``heartbeat``, ``log.chunk``) or accepted without checks.

    Raises:
        InvalidMessage: unknown ``type`` or a schema violation.
    """
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in KNOWN_TYPES:
        raise InvalidMessage(f"unknown message type {kind!r}")
    if kind == "heartbeat":
        return None
    if kind == "log.chunk":
        _check_log_chunk(msg)
        return None
    if kind == CONCURRENCY_REPORT:
        for key in ("messageId", "runId", "jobId", "group"):
            if not isinstance(msg.get(key), str):
                raise InvalidMessage(f"{kind}: {key}")
        return None
    model = _MODELS.get(kind)
    if model is None:
        if kind in EXTENDED_REPLIES and not isinstance(msg.get(EXTENDED_REPLIES[kind][0]), str):
            raise InvalidMessage(f"{kind}: {EXTENDED_REPLIES[kind][0]}")
        return None
    try:
        return model.model_validate(msg)
    except ValidationError as exc:
        raise InvalidMessage(f"{kind}: invalid {field_paths(exc)}") from None


def field_paths(exc: ValidationError) -> str:
    """The paths of the fields ``exc`` refused, such as ``labels[2], inFlightJobs[0].jobId`` (never a value)."""
    paths: list[str] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        text = ""
        for part in err["loc"]:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        if text not in paths:
            paths.append(text)
    return ", ".join(paths) or "message"


def extended_reply(msg: dict[str, Any]) -> dict[str, JSONValue] | None:
    """The minimal reply to an unimplemented extended request (§4.4), or None when none is due."""
    entry = EXTENDED_REPLIES.get(str(msg.get("type")))
    if entry is None:
        return None
    field_name, template = entry
    reply: dict[str, JSONValue] = {"type": template["type"], "requestId": msg[field_name]}
    reply.update({k: v for k, v in template.items() if k != "type"})
    if msg.get("type") == "step.approval-request":
        for key in ("runId", "jobId", "stepIndex"):
            if key in msg:
                reply[key] = msg[key]
    return reply


def check_dispatch(msg: dict[str, JSONValue]) -> None:
    """Validate an outgoing ``job.dispatch`` against §4.2.6 (the agent silently drops a bad one).

    Raises:
        InvalidMessage: a required field is missing or mistyped, secrets are left in ``jobConfig``, or
            ``token`` and ``sourceAuth`` disagree.
    """
    for key in ("messageId", "runId", "jobId", "repoUrl", "ref", "sha", "lockFileUrl"):
        if not isinstance(msg.get(key), str):
            raise InvalidMessage(f"job.dispatch: {key} must be a string")
    if msg.get("type") != "job.dispatch" or not isinstance(msg.get("timestamp"), int):
        raise InvalidMessage("job.dispatch: type/timestamp")
    config = msg.get("jobConfig")
    if not isinstance(config, dict):
        raise InvalidMessage("job.dispatch: jobConfig must be an object")
    leaked = [k for k in STRIPPED_JOB_CONFIG_KEYS if k in config]
    if leaked:
        raise InvalidMessage(f"job.dispatch: jobConfig still holds {', '.join(leaked)}")
    token = msg.get("token")
    auth = msg.get("sourceAuth")
    if token is not None and not isinstance(token, str):
        raise InvalidMessage("job.dispatch: token must be a string")
    if auth is not None:
        if (
            not isinstance(auth, dict)
            or auth.get("kind") not in ("basic", "ssh")
            or not isinstance(auth.get("secret"), str)
        ):
            raise InvalidMessage("job.dispatch: sourceAuth")
        if auth.get("sshHostKeyPolicy") == "pinned" and not isinstance(auth.get("sshKnownHostsPem"), str):
            raise InvalidMessage("job.dispatch: sourceAuth.sshKnownHostsPem is required when pinned")
        if token is not None and (auth.get("kind") != "basic" or auth.get("secret") != token):
            raise InvalidMessage("job.dispatch: token and sourceAuth disagree")
