"""Pure helpers that turn admin-API data into what the templates show: relative links, times, the job graph
of a run, the human reading of a delivery's decision trace, and the step sections of a job log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kici_runtime.orchestrator.dashboard import ansi

RUN_STATUSES = ("pending", "running", "success", "failed", "cancelled", "cancelling", "held")
TERMINAL_JOB = frozenset({"success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped"})
FAILED_JOB = frozenset({"failed", "timed_out_stale", "drift_dropped"})
DELIVERY_STATUSES = ("received", "processed", "lockfile_missing", "lockfile_corrupt", "failed")


def root(sub_path: str) -> str:
    """The relative prefix from a dashboard page back to the dashboard root, from the page's path below
    ``/dashboard/``. Links are relative so they work under ``KICI_BASE_PATH`` and behind a proxy that strips it."""
    depth = sub_path.count("/")
    return "./" if depth == 0 else "../" * depth


def when(value: datetime | None) -> str:
    """``2024-05-01 12:03:04 UTC`` (empty for None)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def duration(
    ms: int | float | None, *, start: datetime | None = None, end: datetime | None = None, now: datetime | None = None
) -> str:
    """``1h 2m``, ``3m 4s``, ``5.2s``; from ``ms`` or from ``start`` to ``end`` (or ``now``)."""
    if ms is None and start is not None:
        stop = end or now
        if stop is None:
            return ""
        ms = (stop - start).total_seconds() * 1000
    if ms is None:
        return ""
    seconds = max(0.0, float(ms) / 1000)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h {(s % 3600) // 60}m"


# ------------------------------------------------------------------------------------------------ job graph
NODE_W, ROW_H, HEAD_H, COL_GAP, ROW_GAP, PAD = 220, 34, 26, 56, 16, 8


@dataclass(slots=True)
class GraphNode:
    job_id: str
    name: str
    label: str
    status: str
    x: int
    y: int


@dataclass(slots=True)
class GraphGroup:
    base_name: str
    matrix: bool
    x: int
    y: int
    height: int
    nodes: list[GraphNode] = field(default_factory=list)


@dataclass(slots=True)
class Graph:
    width: int
    height: int
    groups: list[GraphGroup]
    edges: list[str]  # SVG path data


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def job_graph(jobs: Sequence[Mapping[str, Any]]) -> Graph:
    """Columns by ``needs`` depth; matrix children grouped under their base job; one edge per needed group."""
    by_name = {str(j["job_name"]): j for j in jobs}
    base_of = {name: str(j.get("base_name") or name) for name, j in by_name.items()}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for j in jobs:
        groups.setdefault(base_of[str(j["job_name"])], []).append(j)
    upstream: dict[str, set[str]] = {g: set() for g in groups}
    for g, members in groups.items():
        for j in members:
            for need in j.get("needs") or []:
                up = base_of.get(str(need.get("upstreamName")), str(need.get("upstreamName")))
                if up in groups and up != g:
                    upstream[g].add(up)
    level: dict[str, int] = {}

    def depth(g: str, seen: frozenset[str] = frozenset()) -> int:
        if g not in level:
            level[g] = 0 if not upstream[g] or g in seen else 1 + max(depth(u, seen | {g}) for u in upstream[g])
        return level[g]

    columns: dict[int, list[str]] = {}
    for g in groups:  # creation order within a column
        columns.setdefault(depth(g), []).append(g)
    placed: dict[str, GraphGroup] = {}
    height = 0
    for col in sorted(columns):
        y = PAD
        x = PAD + col * (NODE_W + COL_GAP)
        for g in columns[col]:
            members = groups[g]
            matrix = len(members) > 1 or any(m.get("matrix_values") for m in members)
            top = y + (HEAD_H if matrix else 0)
            nodes = []
            for i, m in enumerate(members):
                name = str(m["job_name"])
                label = name[len(g) :].strip() or name if matrix else name
                nodes.append(
                    GraphNode(
                        job_id=str(m["job_id"]),
                        name=name,
                        label=_short(label),
                        status=str(m["status"]),
                        x=x + (8 if matrix else 0),
                        y=top + i * ROW_H,
                    )
                )
            box_h = (HEAD_H if matrix else 0) + len(members) * ROW_H + (8 if matrix else 0)
            placed[g] = GraphGroup(base_name=_short(g, 30), matrix=matrix, x=x, y=y, height=box_h, nodes=nodes)
            y += box_h + ROW_GAP
        height = max(height, y)
    edges = []
    for g, ups in upstream.items():
        for u in sorted(ups):
            a, b = placed[u], placed[g]
            x1, y1 = a.x + NODE_W, a.y + a.height // 2
            x2, y2 = b.x, b.y + b.height // 2
            mid = (x1 + x2) // 2
            edges.append(f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
    width = PAD * 2 + (max(columns) + 1 if columns else 0) * (NODE_W + COL_GAP) - COL_GAP
    return Graph(width=max(width, NODE_W), height=max(height, ROW_H + PAD), groups=list(placed.values()), edges=edges)


# ------------------------------------------------------------------------------------------------ deliveries
STATUS_TEXT = {
    "received": "Accepted and waiting to be processed (or being processed now).",
    "processed": "Processed: the lock file was read and every workflow's triggers were checked.",
    "lockfile_missing": "No workflow could run: the repository has no .kici/kici.lock.json at this commit.",
    "lockfile_corrupt": "No workflow could run: the lock file could not be read (see the error below).",
    "failed": "Processing failed; the error says why. Fix the cause, then replay the delivery.",
    "duplicate": "A duplicate of an earlier delivery: nothing was done.",
}


@dataclass(slots=True)
class CheckView:
    check: str
    pattern: str
    value: str
    passed: bool
    reason: str


@dataclass(slots=True)
class TriggerView:
    index: Any
    trigger_type: str
    matched: bool
    failed: CheckView | None
    reason: str
    checks: list[CheckView]


@dataclass(slots=True)
class WorkflowView:
    name: str
    matched: bool
    matched_trigger: Any
    summary: str
    triggers: list[TriggerView]


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def explain_trace(trace: Any) -> list[WorkflowView] | None:
    """The stored decision trace (``MatchResult.to_dict()``) as one view per workflow; None when absent."""
    if not isinstance(trace, dict) or not isinstance(trace.get("decisions"), list):
        return None
    out = []
    for d in trace["decisions"]:
        if not isinstance(d, dict):
            continue
        triggers = []
        for t in d.get("triggers") or []:
            if not isinstance(t, dict):
                continue
            checks = [
                CheckView(
                    check=_text(c.get("check")),
                    pattern=_text(c.get("pattern")),
                    value=_text(c.get("value")),
                    passed=bool(c.get("passed")),
                    reason=_text(c.get("reason")),
                )
                for c in t.get("checks") or []
                if isinstance(c, dict)
            ]
            failed = next((c for c in checks if not c.passed), None)
            triggers.append(
                TriggerView(
                    index=t.get("index"),
                    trigger_type=_text(t.get("triggerType")),
                    matched=bool(t.get("matched")),
                    failed=failed,
                    reason=_text(t.get("reason")),
                    checks=checks,
                )
            )
        out.append(
            WorkflowView(
                name=_text(d.get("workflowName")),
                matched=bool(d.get("matched")),
                matched_trigger=d.get("matchedTrigger"),
                summary=_text(d.get("summary")) or "No matching trigger",
                triggers=triggers,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ logs
@dataclass(slots=True)
class LogLine:
    number: int
    segments: list[ansi.Segment]


@dataclass(slots=True)
class LogSection:
    step_index: int
    title: str
    status: str
    lines: list[LogLine] = field(default_factory=list)
    duration: str = ""


def step_title(step_index: int, steps: Mapping[int, Mapping[str, Any]]) -> str:
    if step_index < 0:
        return "Job output"
    name = steps.get(step_index, {}).get("step_name")
    return f"Step {step_index + 1}: {name}" if name else f"Step {step_index + 1}"


def log_sections(
    chunks: Sequence[Mapping[str, Any]],
    steps: Mapping[int, Mapping[str, Any]],
) -> tuple[list[LogSection], int]:
    """Consecutive chunks of one step become one section; lines are numbered from 1 across the job.
    Returns the sections and the id of the last chunk (0 when none)."""
    sections: list[LogSection] = []
    number = 0
    last_id = 0
    for c in chunks:
        index = -1 if c.get("step_index") is None else int(c["step_index"])
        if not sections or sections[-1].step_index != index:
            step = steps.get(index, {})
            sections.append(
                LogSection(
                    step_index=index,
                    title=step_title(index, steps),
                    status=str(step.get("status") or ""),
                    duration=duration(step.get("duration_ms")),
                )
            )
        for raw in (c.get("content") or "").split("\n"):
            number += 1
            sections[-1].lines.append(LogLine(number=number, segments=ansi.segments(raw)))
        last_id = int(c["id"])
    return sections, last_id


def failure_line(sections: Sequence[LogSection]) -> int | None:
    """The line a failed job failed at: the last non-empty line of its first failed step (else of the log)."""
    candidates = [s for s in sections if s.status == "failed"] or list(sections[-1:])
    for section in candidates[:1]:
        for line in reversed(section.lines):
            if any(text.strip() for _, text in line.segments):
                return line.number
        if section.lines:
            return section.lines[-1].number
    return None
