"""The ``.kici/kici.lock.json`` model (schemaVersion 29) and its validating parser.

:func:`parse_lockfile` turns bytes, text or an already-decoded mapping into a frozen :class:`Lockfile`.
Invalid input raises only :class:`kici_core.errors.LockfileError` whose ``path`` is the JSON path of the
offending value (``workflows[2].jobs[0].needs[1]``) and whose ``reason`` says what is wrong.

Policy (see ``docs/lockfile.md``): unknown fields are ignored at every level (and kept, read-only, in the
``raw`` mappings of workflows, jobs and steps); known fields are checked strictly. Fields the orchestrator
never acts on (``contentHash``, ``compileSchemaVersion``, ``source``) default when absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import Final

from kici_core.errors import LockfileError
from kici_core.jsontypes import JSONObject
from kici_core.lockfile_jobs import TERMINAL_JOB_STATUSES, Job, Need, parse_job, parse_label_matcher
from kici_core.lockfile_matrix import MAX_MATRIX_CHILDREN, MatrixChild
from kici_core.lockfile_values import (
    MAX_DEPTH,
    MISSING,
    as_array,
    as_int,
    as_object,
    as_str,
    check_depth,
    field,
    freeze,
    freeze_object,
    join,
    thaw,
)
from kici_core.triggers import Trigger, parse_trigger

SCHEMA_VERSION: Final = 29
"""The only lock-file ``schemaVersion`` accepted."""

LOCKFILE_PATH: Final = ".kici/kici.lock.json"
"""Where the lock file lives in a repository."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRef:
    """Where a workflow is defined: a repo-relative file and an export (``#default``, ``#ci[1]``)."""

    file: str
    export: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Workflow:
    """One workflow of the lock file."""

    name: str
    index: int
    """Position in the lock file's ``workflows`` array."""
    triggers: tuple[Trigger, ...]
    """An empty tuple means the workflow never matches."""
    jobs: tuple[Job, ...]
    source: SourceRef | None = None
    content_hash: str = ""
    compile_schema_version: int = 0
    timeout_ms: int | None = None
    """Whole-run deadline in milliseconds."""
    description: str | None = None
    unsupported_reason: str | None = None
    """Set when the workflow as a whole uses an unsupported feature (every job is then failed)."""
    raw: JSONObject = dc_field(default_factory=lambda: MappingProxyType({}))

    def job(self, name: str) -> Job:
        """Return the job named ``name`` (dynamic generators answer to ``dynamic:<group>``).

        Raises:
            KeyError: no such job.
        """
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lockfile:
    """A validated lock file."""

    schema_version: int
    source: SourceRef
    content_hash: str
    workflows: tuple[Workflow, ...]
    lockfile_hash: str | None = None

    def workflow(self, name: str) -> Workflow:
        """Return the workflow named ``name``.

        Raises:
            KeyError: no such workflow.
        """
        for workflow in self.workflows:
            if workflow.name == name:
                return workflow
        raise KeyError(name)

    @property
    def workflow_names(self) -> tuple[str, ...]:
        """Workflow names in lock-file order."""
        return tuple(w.name for w in self.workflows)


def _source(value: object, path: str) -> SourceRef:
    obj = as_object(value, path)
    file = as_str(field(obj, "file", path, required=True), join(path, "file"))
    export = field(obj, "export", path)
    return SourceRef(file=file, export=None if export is MISSING else as_str(export, join(path, "export")))


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """Return one cycle as ``[a, b, ..., a]``, or None. Iterative DFS in insertion order."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in graph:
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, i = stack[-1]
            targets = graph[node]
            if i == len(targets):
                state[node] = 2
                stack.pop()
                continue
            stack[-1] = (node, i + 1)
            nxt = targets[i]
            if state.get(nxt) == 1:
                names = [n for n, _ in stack]
                return [*names[names.index(nxt) :], nxt]
            if nxt not in state:
                state[nxt] = 1
                stack.append((nxt, 0))
    return None


def _check_jobs(jobs: tuple[Job, ...], path: str) -> None:
    """Cross-job rules: unique names, known ``needs`` targets, no cycles, unique expanded names."""
    by_name: dict[str, Job] = {}
    groups: dict[str, Job] = {}
    for job in jobs:
        job_path = join(join(path, "jobs"), job.index)
        if job.name in by_name:
            raise LockfileError(join(job_path, "name"), f'duplicate job name "{job.name}"')
        by_name[job.name] = job
        if job.group is not None:
            if job.group in groups:
                raise LockfileError(join(job_path, "group"), f'duplicate dynamic group "{job.group}"')
            groups[job.group] = job
    graph: dict[str, list[str]] = {}
    for job in jobs:
        needs_path = join(join(join(path, "jobs"), job.index), "needs")
        targets: list[str] = []
        for k, need in enumerate(job.needs):
            if need.name is not None:
                if need.name not in by_name or by_name[need.name].kind == "dynamic":
                    raise LockfileError(join(needs_path, k), f'unknown job "{need.name}"')
                targets.append(need.name)
            else:
                assert need.group is not None
                if need.group not in groups:
                    raise LockfileError(join(needs_path, k), f'unknown dynamic group "{need.group}"')
                targets.append(groups[need.group].name)
        graph[job.name] = targets
    cycle = _find_cycle(graph)
    if cycle is not None:
        first = by_name[cycle[0]]
        raise LockfileError(join(join(join(path, "jobs"), first.index), "needs"), "needs cycle: " + " -> ".join(cycle))
    expanded: dict[str, str] = {}
    for job in jobs:
        names = [c.name for c in job.matrix] if job.matrix else [job.name]
        for name in names:
            if (name in expanded and expanded[name] != job.name) or names.count(name) > 1:
                raise LockfileError(join(join(path, "jobs"), job.index), f'expanded job name "{name}" is used twice')
            expanded[name] = job.name


def parse_workflow(value: object, index: int, path: str) -> Workflow:
    """Parse and check one workflow object (``path`` is e.g. ``workflows[0]``)."""
    obj = as_object(value, path)
    name = as_str(field(obj, "name", path, required=True), join(path, "name"), non_empty=True)
    triggers_path = join(path, "triggers")
    triggers = []
    for j, trig in enumerate(as_array(field(obj, "triggers", path, required=True), triggers_path)):
        trig_path = join(triggers_path, j)
        triggers.append(parse_trigger(None if trig is None else as_object(trig, trig_path), path=trig_path))
    jobs_path = join(path, "jobs")
    jobs = tuple(
        parse_job(job, k, join(jobs_path, k))
        for k, job in enumerate(as_array(field(obj, "jobs", path, required=True), jobs_path))
    )
    _check_jobs(jobs, path)
    source = field(obj, "source", path)
    content_hash = field(obj, "contentHash", path)
    csv = field(obj, "compileSchemaVersion", path)
    timeout = field(obj, "timeout", path)
    description = field(obj, "description", path)
    if (rules := field(obj, "rules", path)) is not MISSING:
        as_array(rules, join(path, "rules"))
    return Workflow(
        name=name,
        index=index,
        triggers=tuple(triggers),
        jobs=jobs,
        source=None if source is MISSING else _source(source, join(path, "source")),
        content_hash="" if content_hash is MISSING else as_str(content_hash, join(path, "contentHash")),
        compile_schema_version=0 if csv is MISSING else as_int(csv, join(path, "compileSchemaVersion")),
        timeout_ms=None if timeout is MISSING else as_int(timeout, join(path, "timeout"), minimum=0),
        description=None if description is MISSING else as_str(description, join(path, "description")),
        unsupported_reason="workflow approval gates are not supported" if obj.get("approval") is not None else None,
        raw=freeze_object(obj, path),
    )


def _decode(data: bytes | str | Mapping[str, object]) -> Mapping[str, object]:
    if isinstance(data, Mapping):
        check_depth(data)
        return as_object(data, "")

    def _no_constant(name: str) -> object:
        raise ValueError(f"{name} is not allowed in JSON")

    try:
        doc = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        # the decoder itself gives up somewhere past a thousand levels
        raise LockfileError("", f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise LockfileError("", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise LockfileError("", f"the lock file must be a JSON object, got {type(doc).__name__}")
    check_depth(doc)
    return doc


def parse_lockfile(data: bytes | str | Mapping[str, object]) -> Lockfile:
    """Parse and validate a lock file.

    Args:
        data: the file's bytes or text, or the already-decoded top-level JSON object.

    Returns:
        The frozen :class:`Lockfile`.

    Raises:
        LockfileError: the document is not JSON, has another ``schemaVersion`` than 29, or breaks a rule;
            ``err.path`` names the offending value and ``err.reason`` says why.
    """
    doc = _decode(data)
    version = field(doc, "schemaVersion", "", required=True)
    if isinstance(version, bool) or not isinstance(version, int | float):
        raise LockfileError("schemaVersion", "expected a number")
    if version != SCHEMA_VERSION:
        raise LockfileError(
            "schemaVersion",
            f"unsupported lock-file schema version {version:g}; this orchestrator reads version "
            f"{SCHEMA_VERSION} only: recompile the workflows with a matching KiCI compiler",
        )
    source = field(doc, "source", "")
    content_hash = field(doc, "contentHash", "")
    lockfile_hash = field(doc, "lockfileHash", "")
    workflows = tuple(
        parse_workflow(w, i, join("workflows", i))
        for i, w in enumerate(as_array(field(doc, "workflows", "", required=True), "workflows"))
    )
    seen: dict[str, int] = {}
    for wf in workflows:
        if wf.name in seen:
            raise LockfileError(join(join("workflows", wf.index), "name"), f'duplicate workflow name "{wf.name}"')
        seen[wf.name] = wf.index
    return Lockfile(
        schema_version=SCHEMA_VERSION,
        source=SourceRef(file=".kici/workflows", export="#default") if source is MISSING else _source(source, "source"),
        content_hash="" if content_hash is MISSING else as_str(content_hash, "contentHash"),
        lockfile_hash=None if lockfile_hash is MISSING else as_str(lockfile_hash, "lockfileHash"),
        workflows=workflows,
    )


__all__ = [
    "LOCKFILE_PATH",
    "MAX_DEPTH",
    "MAX_MATRIX_CHILDREN",
    "SCHEMA_VERSION",
    "TERMINAL_JOB_STATUSES",
    "Job",
    "Lockfile",
    "LockfileError",
    "MatrixChild",
    "Need",
    "SourceRef",
    "Trigger",
    "Workflow",
    "freeze",
    "parse_label_matcher",
    "parse_lockfile",
    "parse_trigger",
    "parse_workflow",
    "thaw",
]
