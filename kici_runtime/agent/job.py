"""Parsing a ``job.dispatch`` into what the agent needs, and building job-scoped messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kici_core.errors import ProtocolError
from kici_core.jsontypes import JSONValue

UNSUPPORTED_STEP = "unsupported step: this agent runs `run` steps"
TERMINAL_JOB_STATES = frozenset({"success", "failed", "cancelled"})


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSpec:
    """One entry of ``jobConfig.steps`` as this agent reads it."""

    index: int
    name: str
    run: str | None
    env: Mapping[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    continue_on_error: bool = False
    timeout_ms: int | None = None
    invalid: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """The parts of a ``job.dispatch`` the agent acts on."""

    run_id: str
    job_id: str
    name: str
    repo_url: str
    ref: str
    sha: str
    checkout: bool
    basic_user: str | None
    basic_secret: str | None
    ssh_auth: bool
    env: Mapping[str, str]
    steps: tuple[StepSpec, ...]
    timeout_ms: int | None
    grace_period_s: float | None
    max_log_bytes: int | None
    event: Mapping[str, Any] | None = None
    """``jobConfig.event``: the run's triggering event (written to ``$KICI_EVENT_PATH`` for the steps)."""


def _str_map(value: object) -> dict[str, str] | None:
    """An object of scalars as strings; None when ``value`` is not an object of strings/scalars."""
    if not isinstance(value, dict):
        return None
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[str(key)] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            out[str(key)] = str(item)
        else:
            return None
    return out


def _positive_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return None


def parse_step(index: int, raw: object) -> StepSpec:
    """Read one step; problems become ``invalid`` (reported as a failed step), never an exception."""
    if not isinstance(raw, dict):
        return StepSpec(index=index, name=f"step-{index + 1}", run=None, invalid="step is not an object")
    name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else f"step-{index + 1}"
    run = raw.get("run")
    env = _str_map(raw.get("env", {}))
    wd = raw.get("workingDirectory")
    timeout = _positive_number(raw.get("timeout"))
    invalid = None
    if run is not None and not isinstance(run, str):
        invalid = "step field `run` must be a string"
    elif env is None:
        invalid = "step field `env` must be an object of strings"
    elif wd is not None and not isinstance(wd, str):
        invalid = "step field `workingDirectory` must be a string"
    return StepSpec(
        index=index,
        name=str(name),
        run=run if isinstance(run, str) else None,
        env=env or {},
        working_directory=wd if isinstance(wd, str) and wd else None,
        continue_on_error=raw.get("continueOnError") is True,
        timeout_ms=int(timeout) if timeout else None,
        invalid=invalid,
    )


def parse_dispatch(msg: Mapping[str, Any]) -> JobSpec:
    """Validate a ``job.dispatch`` (spec §4.2.6) as far as this agent relies on it.

    Raises:
        ProtocolError: a required field is missing or mistyped, or ``token`` and ``sourceAuth``
            disagree (the upstream agent drops such dispatches too).
    """
    for key in ("runId", "jobId", "repoUrl", "ref", "sha"):
        if not isinstance(msg.get(key), str):
            raise ProtocolError(f"job.dispatch: `{key}` must be a string")
    if not msg["runId"] or not msg["jobId"]:
        raise ProtocolError("job.dispatch: `runId` and `jobId` must not be empty")
    config = msg.get("jobConfig")
    if not isinstance(config, dict):
        raise ProtocolError("job.dispatch: `jobConfig` must be an object")
    token = msg.get("token")
    auth = msg.get("sourceAuth")
    if token is not None and not isinstance(token, str):
        raise ProtocolError("job.dispatch: `token` must be a string")
    user: str | None = None
    secret: str | None = token or None
    ssh = False
    if auth is not None:
        if not isinstance(auth, dict) or auth.get("kind") not in ("basic", "ssh"):
            raise ProtocolError("job.dispatch: `sourceAuth.kind` must be basic or ssh")
        if not isinstance(auth.get("secret"), str):
            raise ProtocolError("job.dispatch: `sourceAuth.secret` must be a string")
        if token is not None and (auth["kind"] != "basic" or auth["secret"] != token):
            raise ProtocolError("job.dispatch: `token` and `sourceAuth` disagree")
        if auth["kind"] == "ssh":
            ssh, secret = True, None
        else:
            user = auth.get("user") if isinstance(auth.get("user"), str) else None
            secret = auth["secret"]
    steps_raw = config.get("steps", [])
    if not isinstance(steps_raw, list):
        raise ProtocolError("job.dispatch: `jobConfig.steps` must be an array")
    name = config.get("name") if isinstance(config.get("name"), str) else config.get("baseJobName")
    timeout = _positive_number(config.get("timeout"))
    grace = config.get("gracePeriod")
    log_cap = _positive_number(msg.get("maxLogSizeBytes"))
    return JobSpec(
        run_id=msg["runId"],
        job_id=msg["jobId"],
        name=name if isinstance(name, str) else "",
        repo_url=msg["repoUrl"],
        ref=msg["ref"],
        sha=msg["sha"],
        checkout=config.get("checkout") is not False,
        basic_user=user,
        basic_secret=secret,
        ssh_auth=ssh,
        env=_str_map(config.get("env", {})) or {},
        steps=tuple(parse_step(i, raw) for i, raw in enumerate(steps_raw)),
        timeout_ms=int(timeout) if timeout else None,
        grace_period_s=float(grace)
        if isinstance(grace, int | float) and not isinstance(grace, bool) and grace >= 0
        else None,
        max_log_bytes=int(log_cap) if log_cap else None,
        event=config["event"] if isinstance(config.get("event"), dict) else None,
    )


def job_message(
    kind: str, spec: JobSpec, *, message_id: str | None, now_ms: int, **fields: JSONValue
) -> dict[str, JSONValue]:
    """A job-scoped message: ``type``, ``messageId`` (omitted when None), ``runId``, ``jobId``, fields,
    ``timestamp``."""
    msg: dict[str, JSONValue] = {"type": kind}
    if message_id is not None:
        msg["messageId"] = message_id
    msg["runId"] = spec.run_id
    msg["jobId"] = spec.job_id
    msg.update(fields)
    msg["timestamp"] = now_ms
    return msg
