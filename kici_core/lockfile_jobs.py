"""Job entries of a lock-file workflow: static jobs, dynamic generators, needs, label matchers, steps.

Jobs are parsed one at a time here; cross-job checks (unknown ``needs`` targets, cycles, duplicate names)
live in :mod:`kici_core.lockfile`. Fields the orchestrator acts on are typed and validated; every job also
keeps its original JSON object, read-only, in ``Job.raw`` so extended fields reach the agent untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from types import MappingProxyType
from typing import Final, Literal

from kici_core import jsregex
from kici_core.errors import LockfileError
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.lockfile_matrix import (
    MatrixChild,
    check_matrix_type,
    expand_matrix,
    parse_static_matrix,
    reject_non_matrix_adjustments,
)
from kici_core.lockfile_values import (
    MISSING,
    as_array,
    as_bool,
    as_int,
    as_number,
    as_object,
    as_str,
    as_str_map,
    field,
    freeze,
    freeze_object,
    join,
    one_of,
)

TERMINAL_JOB_STATUSES: Final = (
    "success",
    "failed",
    "cancelled",
    "skipped",
    "timed_out_stale",
    "drift_dropped",
)
"""Terminal job statuses, the only values allowed in a ``needs`` edge's ``runOn``."""

_JS_REGEX_FLAGS: Final = frozenset("dgimsuvy")


@dataclass(frozen=True, slots=True, kw_only=True)
class Need:
    """One ``needs`` edge: on a job (``name``) or on a dynamic group (``group``)."""

    name: str | None = None
    group: str | None = None
    run_on: frozenset[str] = frozenset({"success"})
    """Upstream statuses that let the downstream run; any other terminal status skips it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A job entry of a workflow.

    ``kind == "dynamic"`` marks a dynamic job generator: it has no name in the lock file, so it gets the
    synthetic name ``dynamic:<group>`` (or ``dynamic:<index>``) and is always unsupported.
    """

    name: str
    index: int
    """Position in the workflow's ``jobs`` array."""
    kind: Literal["static", "dynamic"]
    runs_on: tuple[JSONObject, ...] = ()
    """Required label matchers, as JSON objects (``flags`` filled in as ``""`` when absent)."""
    exclude_labels: tuple[JSONObject, ...] = ()
    runs_on_pick: Literal["deterministic", "any"] = "deterministic"
    needs: tuple[Need, ...] = ()
    steps: tuple[JSONObject, ...] = ()
    """Steps exactly as written (unknown fields such as ``run`` kept), read-only."""
    matrix: tuple[MatrixChild, ...] | None = None
    """Expanded static matrix children; ``None`` for a job without a (valid, static) matrix."""
    matrix_error: str | None = None
    """Why the static matrix could not be expanded (zero or too many children): the job fails."""
    timeout_ms: int | None = None
    grace_period_s: float | None = None
    env: Mapping[str, str] = dc_field(default_factory=lambda: MappingProxyType({}))
    checkout: bool = True
    container: JSONValue = None
    group: str | None = None
    """Dynamic generators only: the group other jobs may ``needs``."""
    unsupported_reason: str | None = None
    """Set when the job uses a feature this orchestrator cannot run; planning fails such a job."""
    raw: JSONObject = dc_field(default_factory=lambda: MappingProxyType({}))

    @property
    def supported(self) -> bool:
        """True unless the job uses an unsupported feature."""
        return self.unsupported_reason is None

    @property
    def step_names(self) -> tuple[str, ...]:
        """Step names in flat execution order (parallel groups contribute their children)."""
        names: list[str] = []
        for step in self.steps:
            children = step.get("children")
            if step.get("kind") == "parallel" and isinstance(children, tuple):
                names.extend(str(c["name"]) for c in children if isinstance(c, Mapping))
            else:
                names.append(str(step["name"]))
        return tuple(names)


def parse_label_matcher(value: object, path: str) -> JSONObject:
    """Validate one label matcher: ``{"kind":"exact","value"}`` or ``{"kind":"regex","source","flags"}``.

    A bare string (the pre-29 format) is rejected. The returned object keeps unknown keys.
    """
    if isinstance(value, str):
        raise LockfileError(path, "label matchers must be objects (plain strings are the old format; recompile)")
    obj = as_object(value, path)
    kind = one_of(field(obj, "kind", path, required=True), join(path, "kind"), ("exact", "regex"))
    if kind == "exact":
        as_str(field(obj, "value", path, required=True), join(path, "value"))
        return freeze_object(obj, path)
    source = as_str(field(obj, "source", path, required=True), join(path, "source"))
    flags = field(obj, "flags", path)
    flags = "" if flags is MISSING else as_str(flags, join(path, "flags"))
    bad = sorted(set(flags) - _JS_REGEX_FLAGS)
    if bad or len(set(flags)) != len(flags):
        raise LockfileError(join(path, "flags"), f'invalid regular-expression flags "{flags}"')
    try:
        jsregex.check_redos(source, flags)
    except jsregex.PatternError as exc:
        raise LockfileError(join(path, "source"), exc.message) from None
    return freeze_object({**obj, "flags": flags}, path)


def _matchers(obj: Mapping[str, object], key: str, path: str) -> tuple[JSONObject, ...]:
    value = field(obj, key, path)
    if value is MISSING:
        return ()
    key_path = join(path, key)
    return tuple(parse_label_matcher(m, join(key_path, i)) for i, m in enumerate(as_array(value, key_path)))


def _runs_on_all(value: object, path: str) -> None:
    obj = as_object(value, path)
    include = field(obj, "include", path)
    if include is not MISSING:
        inc_path = join(path, "include")
        for i, group in enumerate(as_array(include, inc_path)):
            group_path = join(inc_path, i)
            for j, m in enumerate(as_array(group, group_path)):
                parse_label_matcher(m, join(group_path, j))
    _matchers(obj, "exclude", path)


def parse_need(value: object, path: str) -> Need:
    """Read one ``needs`` entry: a job name, ``{name, runOn}`` or ``{group, runOn}``.

    ``runOn`` defaults to ``["success"]`` when absent; when present it must be a non-empty list of terminal
    job statuses.
    """
    if isinstance(value, str):
        return Need(name=as_str(value, path, non_empty=True))
    obj = as_object(value, path)
    name, group = field(obj, "name", path), field(obj, "group", path)
    if (name is MISSING) == (group is MISSING):
        raise LockfileError(path, 'a needs entry needs exactly one of "name" and "group"')
    run_on_raw = field(obj, "runOn", path)
    run_on = frozenset({"success"})
    if run_on_raw is not MISSING:
        run_on_path = join(path, "runOn")
        items = as_array(run_on_raw, run_on_path)
        if not items:
            raise LockfileError(run_on_path, "must list at least one status")
        run_on = frozenset(one_of(s, join(run_on_path, i), TERMINAL_JOB_STATUSES) for i, s in enumerate(items))
    if name is not MISSING:
        return Need(name=as_str(name, join(path, "name"), non_empty=True), run_on=run_on)
    return Need(group=as_str(group, join(path, "group"), non_empty=True), run_on=run_on)


def _needs(obj: Mapping[str, object], path: str) -> tuple[Need, ...]:
    value = field(obj, "needs", path)
    if value is MISSING:
        return ()
    needs_path = join(path, "needs")
    return tuple(parse_need(item, join(needs_path, i)) for i, item in enumerate(as_array(value, needs_path)))


def _check_step(step: Mapping[str, object], path: str, *, nested: bool) -> None:
    kind = field(step, "kind", path)
    if kind is not MISSING and one_of(kind, join(path, "kind"), ("sequential", "parallel")) == "parallel":
        if nested:
            raise LockfileError(join(path, "kind"), "parallel groups cannot be nested")
        as_str(field(step, "name", path, required=True), join(path, "name"))
        children_path = join(path, "children")
        for i, child in enumerate(as_array(field(step, "children", path, required=True), children_path)):
            _check_step(as_object(child, join(children_path, i)), join(children_path, i), nested=True)
        for key in ("failFast",):
            if (v := field(step, key, path)) is not MISSING:
                as_bool(v, join(path, key))
        if (v := field(step, "maxParallel", path)) is not MISSING:
            as_int(v, join(path, "maxParallel"), minimum=1)
        return
    as_str(field(step, "name", path, required=True), join(path, "name"))
    for key in ("hasOutputs", "continueOnError"):
        if (v := field(step, key, path)) is not MISSING:
            as_bool(v, join(path, key))
    if (v := field(step, "timeout", path)) is not MISSING:
        as_int(v, join(path, "timeout"), minimum=0)
    for key in ("run", "workingDirectory"):
        if (v := field(step, key, path)) is not MISSING:
            as_str(v, join(path, key))
    if (v := field(step, "env", path)) is not MISSING:
        as_str_map(v, join(path, "env"))


def _steps(obj: Mapping[str, object], path: str) -> tuple[JSONObject, ...]:
    steps_path = join(path, "steps")
    steps = []
    for i, value in enumerate(as_array(field(obj, "steps", path, required=True), steps_path)):
        step_path = join(steps_path, i)
        step = as_object(value, step_path)
        _check_step(step, step_path, nested=False)
        steps.append(freeze_object(step, step_path))
    return tuple(steps)


def _env(obj: Mapping[str, object], path: str) -> tuple[Mapping[str, str], str | None]:
    value = field(obj, "env", path)
    if value is MISSING:
        return MappingProxyType({}), None
    env_path = join(path, "env")
    env_obj = as_object(value, env_path)
    if env_obj.get("_type") == "inline":
        as_str(field(env_obj, "expression", env_path, required=True), join(env_path, "expression"))
        return MappingProxyType({}), "env computed by a JavaScript expression is not supported"
    return as_str_map(env_obj, env_path), None


def _container(obj: Mapping[str, object], path: str) -> JSONValue:
    value = field(obj, "container", path)
    if value is MISSING:
        return None
    c_path = join(path, "container")
    if isinstance(value, str):
        return as_str(value, c_path, non_empty=True)
    c_obj = as_object(value, c_path)
    as_str(field(c_obj, "image", c_path, required=True), join(c_path, "image"), non_empty=True)
    if (env := field(c_obj, "env", c_path)) is not MISSING:
        as_str_map(env, join(c_path, "env"))
    return freeze(c_obj, c_path)


def _first_unsupported(obj: Mapping[str, object]) -> str | None:
    if obj.get("runsOnAll") is not None:
        return "runsOnAll host fan-out is not supported"
    if obj.get("approval") is not None:
        return "approval gates are not supported"
    if obj.get("dynamicEnv") is True:
        return "env computed at dispatch time (dynamicEnv) is not supported"
    return None


def parse_static_job(obj: Mapping[str, object], index: int, path: str) -> Job:
    """Parse a static job object (``_type == "static"``)."""
    name = as_str(field(obj, "name", path, required=True), join(path, "name"), non_empty=True)
    if (runs_on_all := field(obj, "runsOnAll", path)) is not MISSING:
        _runs_on_all(runs_on_all, join(path, "runsOnAll"))
    pick = field(obj, "runsOnPick", path)
    timeout = field(obj, "timeout", path)
    grace = field(obj, "gracePeriod", path)
    checkout = field(obj, "checkout", path)
    for key in ("failFast", "includeUninitialized"):
        if (v := field(obj, key, path)) is not MISSING:
            as_bool(v, join(path, key))
    if (v := field(obj, "maxParallel", path)) is not MISSING:
        as_int(v, join(path, "maxParallel"), minimum=1)
    env, env_problem = _env(obj, path)
    unsupported = _first_unsupported(obj) or env_problem
    matrix: tuple[MatrixChild, ...] | None = None
    matrix_error: str | None = None
    matrix_value = field(obj, "matrix", path)
    if matrix_value is MISSING:
        reject_non_matrix_adjustments(obj, path)
    else:
        m_path = join(path, "matrix")
        m_obj = as_object(matrix_value, m_path)
        if check_matrix_type(m_obj, m_path) == "dynamic":
            reject_non_matrix_adjustments(obj, path)
            unsupported = unsupported or "dynamic matrices are not supported"
        else:
            matrix, matrix_error = expand_matrix(name, parse_static_matrix(m_obj, obj, m_path, path))
            if matrix_error is not None:
                matrix = None
    pick_value = (
        "deterministic" if pick is MISSING else one_of(pick, join(path, "runsOnPick"), ("deterministic", "any"))
    )
    return Job(
        name=name,
        index=index,
        kind="static",
        runs_on=_matchers(obj, "runsOn", path),
        exclude_labels=_matchers(obj, "excludeLabels", path),
        runs_on_pick="any" if pick_value == "any" else "deterministic",
        needs=_needs(obj, path),
        steps=_steps(obj, path),
        matrix=matrix,
        matrix_error=matrix_error,
        timeout_ms=None if timeout is MISSING else as_int(timeout, join(path, "timeout"), minimum=0),
        grace_period_s=None if grace is MISSING else as_number(grace, join(path, "gracePeriod")),
        env=env,
        checkout=True if checkout is MISSING else as_bool(checkout, join(path, "checkout")),
        container=_container(obj, path),
        unsupported_reason=unsupported,
        raw=freeze_object(obj, path),
    )


def parse_dynamic_job(obj: Mapping[str, object], index: int, path: str) -> Job:
    """Parse a dynamic job generator (``_type == "dynamic"``); it is kept but marked unsupported."""
    group = field(obj, "group", path)
    group_name = None if group is MISSING else as_str(group, join(path, "group"), non_empty=True)
    source_index: int | None = None
    if (source := field(obj, "source", path)) is not MISSING:
        s_path = join(path, "source")
        s_obj = as_object(source, s_path)
        as_str(field(s_obj, "file", s_path, required=True), join(s_path, "file"))
        if (idx := field(s_obj, "index", s_path)) is not MISSING:
            source_index = as_int(idx, join(s_path, "index"), minimum=0)
    label = group_name if group_name is not None else str(index if source_index is None else source_index)
    return Job(
        name=f"dynamic:{label}",
        index=index,
        kind="dynamic",
        needs=_needs(obj, path),
        group=group_name,
        unsupported_reason="dynamic job generators are not supported (they need agent-side evaluation)",
        raw=freeze_object(obj, path),
    )


def parse_job(value: object, index: int, path: str) -> Job:
    """Parse one entry of a workflow's ``jobs`` array."""
    obj = as_object(value, path)
    kind = one_of(field(obj, "_type", path, required=True), join(path, "_type"), ("static", "dynamic"))
    if kind == "dynamic":
        return parse_dynamic_job(obj, index, path)
    return parse_static_job(obj, index, path)
