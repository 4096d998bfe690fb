"""GitHub check runs: names, conclusions and what a check run shows (webhooks spec §6.10).

A run started by a delivery from a GitHub App source has one check run per workflow (``kici/<workflow>``) and one
per job (``kici/<workflow>/job/<job>``, matrix children by their expanded names) on the commit the run tests.
The state a check run must show is written by the transactions that change the run or job; this module turns
that state into the body of GitHub's create/update request (:func:`request_body`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from kici_core.jsontypes import JSONObject, JSONValue

__all__ = [
    "JOB_CONCLUSIONS",
    "MAX_SUMMARY_BYTES",
    "MAX_TAIL_BYTES",
    "MAX_TAIL_LINES",
    "RUN_CONCLUSIONS",
    "CheckView",
    "FailedStep",
    "details_url",
    "job_check_name",
    "mask_tokens",
    "request_body",
    "tail_lines",
    "workflow_check_name",
]

JOB_CONCLUSIONS: dict[str, str] = {
    "success": "success",
    "failed": "failure",
    "cancelled": "cancelled",
    "skipped": "skipped",
    "timed_out_stale": "timed_out",
    "drift_dropped": "cancelled",
}
"""GitHub conclusion of each terminal job status."""
RUN_CONCLUSIONS: dict[str, str] = {"success": "success", "failed": "failure", "cancelled": "cancelled"}
"""GitHub conclusion of each terminal run status."""

MAX_SUMMARY_BYTES = 60_000
"""GitHub refuses an ``output.summary`` over 65,535 characters; stay well below."""
MAX_TAIL_LINES = 30
"""Log lines of a failing step shown in its check run."""
MAX_TAIL_BYTES = 4096
"""Bytes of log shown at most (the last ones)."""
_MAX_LINE = 500
_WAITING = "Waiting for agent..."
_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S), "***"),
    (re.compile(r"\b(gh[pousr])_[A-Za-z0-9]{16,}"), r"\1_***"),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{16,}"), "github_pat_***"),
    (re.compile(r"\bkat_[0-9A-Fa-f]{64}\b"), "kat_***"),
    (re.compile(r"(?i)\b(authorization:\s*)(?:(?:bearer|token|basic)\s+)?\S+"), r"\1***"),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\1***"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1***@"),
)


def workflow_check_name(workflow: str) -> str:
    """``kici/<workflow>``."""
    return f"kici/{workflow}"


def job_check_name(workflow: str, job: str) -> str:
    """``kici/<workflow>/job/<job>`` (``job`` is the expanded name)."""
    return f"kici/{workflow}/job/{job}"


def details_url(dashboard_url: str | None, *, org_id: str | None, run_id: str) -> str | None:
    """``<dashboard>/r/orgs/<org>/runs/<runId>``, or None without a dashboard URL."""
    if not dashboard_url:
        return None
    return f"{dashboard_url.rstrip('/')}/r/orgs/{org_id or '__default__'}/runs/{run_id}"


def mask_tokens(text: str) -> str:
    """``text`` with well-known credential shapes masked: GitHub tokens, agent tokens, private keys,
    ``Authorization`` values, bearer tokens and passwords in URLs."""
    for pattern, repl in _TOKEN_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def tail_lines(lines: Sequence[str], *, mask: Callable[[str], str] | None = None) -> list[str]:
    """The last :data:`MAX_TAIL_LINES` of ``lines`` within :data:`MAX_TAIL_BYTES`, each line cut at 500
    characters, masked (:func:`mask_tokens`, then ``mask``)."""
    out: list[str] = []
    size = 0
    for raw in reversed(lines):
        line = mask_tokens(raw.rstrip("\r"))
        if mask is not None:
            line = mask(line)
        if len(line) > _MAX_LINE:
            line = line[:_MAX_LINE] + "..."
        size += len(line.encode()) + 1
        if len(out) >= MAX_TAIL_LINES or (out and size > MAX_TAIL_BYTES):
            break
        out.append(line)
    out.reverse()
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedStep:
    """The first failed step of a failed job and the end of its log."""

    index: int
    name: str | None
    exit_code: int | None = None
    error: str | None = None
    tail: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckView:
    """Everything one check-run request is built from.

    ``job_name`` None means the workflow's check run. ``status`` is GitHub's (``queued``, ``in_progress``,
    ``completed``); ``conclusion`` is set when completed. ``detail`` says why (failure reason, error).
    """

    name: str
    head_sha: str
    external_id: str
    run_id: str
    workflow_name: str
    job_name: str | None
    status: str
    conclusion: str | None = None
    detail: str | None = None
    agent_id: str | None = None
    trace_id: str | None = None
    attempt: int = 1
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_step: FailedStep | None = None
    details_url: str | None = None


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _fence(lines: Sequence[str]) -> str:
    body = "\n".join(line.replace("```", "`\u200b``") for line in lines)
    return f"```\n{body}\n```"


def _headline(view: CheckView) -> str:
    what = "job" if view.job_name is not None else "workflow"
    if view.status == "queued":
        return _WAITING
    if view.status == "in_progress":
        return f"Running on agent `{view.agent_id}`." if view.agent_id else f"The {what} is running."
    words = {
        "success": "Succeeded.",
        "failure": "Failed",
        "cancelled": "Cancelled",
        "skipped": "Skipped",
        "timed_out": "Timed out",
    }
    head = words.get(view.conclusion or "", f"Completed ({view.conclusion}).")
    if head.endswith("."):
        return head
    return f"{head}: {view.detail}" if view.detail else f"{head}."


def _summary(view: CheckView) -> str:
    parts = [_headline(view)]
    step = view.failed_step
    if step is not None and view.conclusion == "failure":
        label = f"`{step.name}`" if step.name else f"step {step.index}"
        facts = [f"step {step.index}"] if step.name else []
        if step.exit_code is not None:
            facts.append(f"exit code {step.exit_code}")
        parts.append(f"**Failing step:** {label}" + (f" ({', '.join(facts)})" if facts else ""))
        if step.error:
            parts.append(mask_tokens(step.error)[:_MAX_LINE])
        if step.tail:
            parts.append(f"Last {len(step.tail)} log line(s):\n\n{_fence(step.tail)}")
    trace = f"Trace: {view.trace_id or '-'} | Run: {view.run_id}"
    if view.attempt > 1:
        trace += f" | Attempt: {view.attempt}"
    parts.append(trace)
    text = "\n\n".join(parts)
    data = text.encode()
    if len(data) > MAX_SUMMARY_BYTES:
        text = data[: MAX_SUMMARY_BYTES - 20].decode(errors="ignore") + "\n\n(truncated)"
    return text


def request_body(view: CheckView, *, create: bool) -> JSONObject:
    """The JSON body of ``POST /repos/{o}/{r}/check-runs`` (``create``) or of the ``PATCH`` of an existing one:
    name, ``external_id``, status, conclusion, times, ``details_url`` and ``output`` (title ``KiCI: <workflow>``
    or ``KiCI: <workflow>/<job>``, the summary: headline, failing step with the end of its log, trace and run
    ids)."""
    title = f"KiCI: {view.workflow_name}" + (f"/{view.job_name}" if view.job_name is not None else "")
    body: dict[str, JSONValue] = {
        "name": view.name,
        "external_id": view.external_id,
        "status": view.status,
        "output": {"title": title, "summary": _summary(view)},
    }
    if create:
        body["head_sha"] = view.head_sha
    if view.details_url:
        body["details_url"] = view.details_url
    if view.started_at is not None and view.status != "queued":
        body["started_at"] = _iso(view.started_at)
    if view.status == "completed":
        body["conclusion"] = view.conclusion or "neutral"
        if view.completed_at is not None:
            body["completed_at"] = _iso(view.completed_at)
    return body
