"""Trigger matching (spec §4): which workflows a normalised event starts, and why.

Each trigger is compiled once into a list of checks (its filters, in the spec's order, AND-ed);
the compiled form is cached on the trigger object. :func:`trigger_matches` runs the fast path;
:class:`TriggerIndex` indexes a whole lock file's triggers by event type and produces a
:class:`MatchResult` with a decision trace that says, for every workflow and trigger, whether it
matched or which filter rejected it and why. The filter builders live in
:mod:`kici_core.match_checks` and the trace types in :mod:`kici_core.trace` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kici_core import match_checks as mc
from kici_core import triggers as t
from kici_core.events import NormalisedEvent
from kici_core.jsontypes import JSONValue
from kici_core.trace import (
    MATCHED,
    SUMMARY_MATCHED,
    SUMMARY_NOT_MATCHED,
    MatchResult,
    RenderMemo,
    Steps,
    TraceEntry,
    TriggerDecision,
    WorkflowDecision,
)

__all__ = [
    "SUMMARY_MATCHED",
    "SUMMARY_NOT_MATCHED",
    "MatchResult",
    "TraceEntry",
    "TriggerDecision",
    "TriggerIndex",
    "WorkflowDecision",
    "WorkflowTriggers",
    "evaluate",
    "explain_trigger",
    "first_matching_trigger",
    "matches",
    "needs_changed_files",
    "trigger_checks",
    "trigger_matches",
    "workflow_matches",
]

# ---------------------------------------------------------------------------------------------
# Compiling triggers
# ---------------------------------------------------------------------------------------------


def _filters(trigger: t.Trigger) -> list[mc.Check | None]:
    """The filters of a trigger after its event-type check, in the spec's order (§4.3)."""
    match trigger:
        case t.PushTrigger():
            return [
                mc.pattern_list("branches", trigger.branches, mc.target),
                mc.path_filter(trigger.paths),
                mc.repo_filter(trigger.repos),
            ]
        case t.PrTrigger():
            return [
                mc.member("events", trigger.events, mc.action),
                mc.pattern_list("targetBranches", trigger.target_branches, mc.target),
                mc.source_branches(trigger.source_branches),
                mc.path_filter(trigger.paths),
                mc.repo_filter(trigger.repos),
            ]
        case t.TagTrigger():
            return [mc.pattern_list("patterns", trigger.patterns, mc.target), mc.repo_filter(trigger.repos)]
        case t.DispatchTrigger():
            return [mc.member("types", trigger.types, mc.action), mc.repo_filter(trigger.repos)]
        case t.ReleaseTrigger() | t.ReviewCommentTrigger() | t.StarTrigger() | t.WatchTrigger():
            return [mc.member("actions", trigger.actions, mc.action), mc.repo_filter(trigger.repos)]
        case t.ReviewTrigger():
            return [
                mc.member("actions", trigger.actions, mc.action),
                mc.member("states", trigger.states, mc.payload_str("review", "state")),
                mc.repo_filter(trigger.repos),
            ]
        case t.CommentTrigger():
            return [
                mc.member("actions", trigger.actions, mc.action),
                mc.comment_source(trigger.source),
                mc.body_match(trigger.body_match),
                mc.repo_filter(trigger.repos),
            ]
        case t.CreateTrigger() | t.DeleteTrigger():
            return [
                mc.member("refTypes", trigger.ref_types, mc.payload_str("ref_type")),
                mc.ref_patterns(trigger.patterns),
                mc.repo_filter(trigger.repos),
            ]
        case t.StatusTrigger():
            return [
                mc.context_list(trigger.contexts),
                mc.member("states", trigger.states, mc.payload_str("state")),
                mc.repo_filter(trigger.repos),
            ]
        case t.WorkflowRunTrigger():
            return [
                mc.member("actions", trigger.actions, mc.action),
                mc.member("workflows", trigger.workflows, mc.payload_str("workflow_run", "name")),
                mc.member("conclusions", trigger.conclusions, mc.payload_str("workflow_run", "conclusion")),
                mc.repo_filter(trigger.repos),
            ]
        case t.ForkTrigger():
            return [mc.repo_filter(trigger.repos)]
        case t.WebhookTrigger():
            return [mc.member("actions", trigger.actions, mc.action), mc.repo_filter(trigger.repos)]
        case t.ScheduleTrigger():
            cron = trigger.cron_expression
            get = mc.payload_str("cronExpression")
            return [
                mc.Check(
                    "cronExpression",
                    cron,
                    lambda e: get(e) == cron,
                    get,
                    lambda e: f"cronExpression: {mc.q(get(e))} is not {mc.q(cron)}",
                    keyed=True,
                )
            ]
        case t.KiciEventTrigger():
            return [
                mc.Check(
                    "eventName",
                    trigger.event_name,
                    (lambda name: lambda e: mc.payload_str("eventName")(e) == name)(trigger.event_name),
                    mc.payload_str("eventName"),
                    lambda e: f"eventName: {mc.q(mc.payload_str('eventName')(e))} is not {mc.q(trigger.event_name)}",
                    keyed=True,
                ),
                mc.json_check("match", trigger.match, mc.inner_payload, negate=False),
                mc.json_check("not", trigger.not_, mc.inner_payload, negate=True),
                mc.equals("source", trigger.source, mc.payload_str("sourceRepo")),
            ]
        case t.WorkflowCompleteTrigger():
            return [
                mc.equals("name", trigger.name, mc.payload_str("workflowName")),
                mc.member("status", trigger.status, mc.payload_str("status")),
                mc.equals("source", trigger.source, mc.payload_str("sourceRepo")),
            ]
        case t.JobCompleteTrigger():
            return [
                mc.equals("workflow", trigger.workflow, mc.payload_str("workflowName")),
                mc.equals("job", trigger.job, mc.payload_str("jobName")),
                mc.member("status", trigger.status, mc.payload_str("status")),
                mc.equals("source", trigger.source, mc.payload_str("sourceRepo")),
            ]
        case t.GenericWebhookTrigger():
            source = trigger.source
            get_source = mc.payload_str("source")

            def event_name(e: mc.Event) -> str:
                return mc.payload_str("eventType")(e) or e.action or ""

            return [
                mc.Check(
                    "source",
                    source,
                    lambda e: get_source(e) == source,
                    get_source,
                    lambda e: f"source: {mc.q(get_source(e))} is not {mc.q(source)}",
                    keyed=True,
                ),
                mc.member("events", trigger.events, event_name),
                mc.json_check("match", trigger.match, mc.whole_payload, negate=False),
                mc.json_check("not", trigger.not_, mc.whole_payload, negate=True),
            ]
        case t.LifecycleTrigger():
            return [
                mc.member("events", trigger.events, mc.payload_str("lifecycleEvent")),
                mc.member("sources", trigger.sources, mc.payload_str("sourceRepo")),
            ]
        case t.UnknownTrigger():
            return []


class _Compiled:
    """A trigger's checks, a specialised fast predicate, and the rendering of its trace."""

    __slots__ = ("checks", "fast", "filters", "keyed", "kind", "types", "unknown")

    def __init__(self, trigger: t.Trigger) -> None:
        self.types = trigger.event_types
        self.unknown = isinstance(trigger, t.UnknownTrigger)
        self.kind = (trigger.type_name or "null") if isinstance(trigger, t.UnknownTrigger) else trigger.kind
        filters = [c for c in _filters(trigger) if c is not None]
        self.checks: tuple[mc.Check, ...] = (mc.type_check(self.types), *filters)
        self.filters: tuple[mc.Test, ...] = tuple(c.test for c in filters)
        """The filters' predicates (the event type already known to be one of ``types``)."""
        self.fast: mc.Test = _specialise(self.types, list(self.filters))
        keyed = 0
        while keyed < len(self.checks) and self.checks[keyed].keyed:
            keyed += 1
        self.keyed = keyed
        """How many leading checks are ``keyed`` (their trace is a function of their values)."""

    def step(self, event: NormalisedEvent) -> int:
        """Where evaluating ``event`` stops: the position of the first failing check, or ``MATCHED``."""
        if event.type not in self.types:
            return 0
        for pos, test in enumerate(self.filters, 1):
            if not test(event):
                return pos
        return MATCHED

    def memo_key(self, step: int, event: NormalisedEvent) -> tuple[str, ...] | None:
        if self.unknown:
            return ()
        run = len(self.checks) if step == MATCHED else step + 1
        if run > self.keyed:
            return None
        checks = self.checks
        if run == 1:
            return (checks[0].value(event),)
        if run == 2:
            return (checks[0].value(event), checks[1].value(event))
        return tuple(checks[pos].value(event) for pos in range(run))

    def checks_run(self, step: int) -> int:
        if self.unknown:
            return 0
        return len(self.checks) if step == MATCHED else step + 1

    def decision(self, index: int, step: int, event: NormalisedEvent) -> TriggerDecision:
        if self.unknown:
            reason = f"unknown trigger type {mc.q(self.kind)} never matches"
            return TriggerDecision(index=index, trigger_type=self.kind, matched=False, reason=reason)
        checks = self.checks
        entries: list[TraceEntry] = []
        for pos in range(len(checks) if step == MATCHED else step + 1):
            check = checks[pos]
            passed = pos != step
            entries.append(
                TraceEntry(
                    check=check.name,
                    pattern=check.pattern,
                    value=check.value(event),
                    passed=passed,
                    reason=None if passed else check.reason(event),
                )
            )
        if step == MATCHED:
            return TriggerDecision(index=index, trigger_type=self.kind, matched=True, checks=tuple(entries))
        return TriggerDecision(
            index=index, trigger_type=self.kind, matched=False, checks=tuple(entries), reason=entries[-1].reason
        )

    def decision_dict(self, index: int, step: int, event: NormalisedEvent) -> dict[str, JSONValue]:
        # decision(...).to_dict() without the intermediate objects: the stored trace of every delivery
        if self.unknown:
            reason = f"unknown trigger type {mc.q(self.kind)} never matches"
            return {"index": index, "triggerType": self.kind, "matched": False, "reason": reason, "checks": []}
        checks = self.checks
        entries: list[JSONValue] = []
        if step == MATCHED:
            for check in checks:
                entries.append(
                    {"check": check.name, "pattern": check.pattern, "value": check.value(event), "passed": True}
                )
            return {"index": index, "triggerType": self.kind, "matched": True, "reason": None, "checks": entries}
        for pos in range(step):
            check = checks[pos]
            entries.append({"check": check.name, "pattern": check.pattern, "value": check.value(event), "passed": True})
        check = checks[step]
        why = check.reason(event)
        entries.append(
            {"check": check.name, "pattern": check.pattern, "value": check.value(event), "passed": False, "reason": why}
        )
        return {"index": index, "triggerType": self.kind, "matched": False, "reason": why, "checks": entries}


def _specialise(types: frozenset[str], tests: list[mc.Test]) -> mc.Test:
    """One closure for type check + filters, unrolled for the common small counts."""
    if not types:
        return lambda e: False
    if len(types) == 1:
        (only,) = types
        type_ok: mc.Test = lambda e: e.type == only  # noqa: E731
    else:
        type_ok = lambda e: e.type in types  # noqa: E731
    if not tests:
        return type_ok
    if len(tests) == 1:
        (a,) = tests
        if len(types) == 1:
            return lambda e: e.type == only and a(e)
        return lambda e: type_ok(e) and a(e)
    if len(tests) == 2:
        a, b = tests
        return lambda e: type_ok(e) and a(e) and b(e)

    def run_all(e: mc.Event) -> bool:
        if not type_ok(e):
            return False
        return all(test(e) for test in tests)

    return run_all


def _compiled(trigger: t.Trigger) -> _Compiled:
    c = trigger._compiled
    if type(c) is _Compiled:
        return c
    fresh = _Compiled(trigger)
    object.__setattr__(trigger, "_compiled", fresh)
    return fresh


def trigger_matches(trigger: t.Trigger, event: NormalisedEvent) -> bool:
    """True when ``event`` satisfies every filter of ``trigger`` (spec §4.3)."""
    c = trigger._compiled
    if type(c) is not _Compiled:
        c = _compiled(trigger)
    return c.fast(event)


def trigger_checks(trigger: t.Trigger) -> tuple[mc.Check, ...]:
    """The checks of ``trigger`` in evaluation order: the event-type check, then its filters (spec §4.3)."""
    return _compiled(trigger).checks


def explain_trigger(trigger: t.Trigger, event: NormalisedEvent, index: int = 0) -> TriggerDecision:
    """Evaluate ``trigger`` check by check, stopping at the first failing filter."""
    compiled = _compiled(trigger)
    return compiled.decision(index, compiled.step(event), event)


def first_matching_trigger(triggers: Sequence[t.Trigger], event: NormalisedEvent) -> int | None:
    """Index of the first trigger that matches ``event``, or None (an empty list never matches)."""
    for i, trigger in enumerate(triggers):
        if trigger_matches(trigger, event):
            return i
    return None


# ---------------------------------------------------------------------------------------------
# Workflow sets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowTriggers:
    """What matching needs from one workflow: its name and its triggers in lock-file order."""

    name: str
    triggers: tuple[t.Trigger, ...]


# A workflow's traced evaluation plan for one event type, as (shape, payload):
_CONSTANT = 0  # payload: the steps (no trigger of this type matches; or one trigger without filters matches)
_ONE_TEST = 1  # payload: the only filter of the workflow's only trigger
_GENERAL = 2  # payload: per trigger, its filters, or None when the event type rules it out
_Plan = tuple[int, object]
_HIT: Steps = (MATCHED,)
_FAIL_FIRST_FILTER: Steps = (1,)


def _plan(triggers: Sequence[_Compiled], event_type: str) -> _Plan:
    relevant = [c.filters if event_type in c.types else None for c in triggers]
    if all(f is None for f in relevant):
        return (_CONSTANT, (0,) * len(triggers))
    if len(triggers) == 1 and relevant[0] is not None:
        (filters,) = relevant
        if not filters:
            return (_CONSTANT, _HIT)
        if len(filters) == 1:
            return (_ONE_TEST, filters[0])
    return (_GENERAL, tuple(relevant))


def _shared_getters(compiled: Sequence[Sequence[_Compiled]]) -> list[mc.Getter] | None:
    """The distinct value getters of every check when all checks are keyed (else None): their values then
    decide the whole trace of an event."""
    getters: dict[mc.Getter, None] = {}
    for triggers in compiled:
        for c in triggers:
            if c.unknown:
                continue
            if c.keyed < len(c.checks):
                return None
            for check in c.checks:
                getters[check.value] = None
    return list(getters)


class TriggerIndex:
    """A lock file's triggers indexed by event type; build once, evaluate many events."""

    __slots__ = ("_by_type", "_compiled", "_memo", "_names", "_plans", "workflows")

    def __init__(self, workflows: Sequence[WorkflowTriggers]) -> None:
        self.workflows = tuple(workflows)
        self._names = tuple(wf.name for wf in self.workflows)
        self._compiled = tuple(tuple(_compiled(tr) for tr in wf.triggers) for wf in self.workflows)
        by_type: dict[str, list[tuple[int, int, mc.Test]]] = {}
        for wi, wf in enumerate(self.workflows):
            for ti, trigger in enumerate(wf.triggers):
                fast = _compiled(trigger).fast
                for kind in trigger.event_types:
                    by_type.setdefault(kind, []).append((wi, ti, fast))
        self._by_type = {k: tuple(sorted(v, key=lambda x: (x[0], x[1]))) for k, v in by_type.items()}
        self._plans: dict[str, tuple[_Plan, ...]] = {}
        self._memo = RenderMemo(getters=_shared_getters(self._compiled), workflows=len(self.workflows))

    def first_matches(self, event: NormalisedEvent, *, check: Callable[[], None] | None = None) -> dict[int, int]:
        """``{workflow index: first matching trigger index}`` for the matching workflows, in workflow order.

        ``check`` is called before each trigger is evaluated; it may raise to stop matching (a time budget).
        """
        found: dict[int, int] = {}
        for wi, ti, fast in self._by_type.get(event.type, ()):
            if wi not in found:
                if check is not None:
                    check()
                if fast(event):
                    found[wi] = ti
        return found

    def _plans_for(self, event_type: str) -> tuple[_Plan, ...]:
        plans = self._plans.get(event_type)
        if plans is None:
            plans = tuple(_plan(compiled, event_type) for compiled in self._compiled)
            if len(self._plans) < 64:  # event types are a small closed set; bound it anyway
                self._plans[event_type] = plans
        return plans

    def _traced(self, event: NormalisedEvent, check: Callable[[], None] | None) -> tuple[dict[int, int], list[Steps]]:
        """Evaluate every workflow recording its :data:`Steps` (no text: that is rendered when read)."""
        found: dict[int, int] = {}
        steps: list[Steps] = []
        record = steps.append
        for wi, (shape, payload) in enumerate(self._plans_for(event.type)):
            if check is not None:
                check()
            if shape == _ONE_TEST:
                if payload(event):  # type: ignore[operator]
                    found[wi] = 0
                    record(_HIT)
                else:
                    record(_FAIL_FIRST_FILTER)
            elif shape == _CONSTANT:
                if payload is _HIT:
                    found[wi] = 0
                record(payload)  # type: ignore[arg-type]
            else:
                record(self._general(wi, payload, event, check, found))  # type: ignore[arg-type]
        return found, steps

    @staticmethod
    def _general(
        wi: int,
        per_trigger: tuple[tuple[mc.Test, ...] | None, ...],
        event: NormalisedEvent,
        check: Callable[[], None] | None,
        found: dict[int, int],
    ) -> Steps:
        out: list[int] = []
        for ti, filters in enumerate(per_trigger):
            if ti and check is not None:
                check()
            if filters is None:
                out.append(0)
                continue
            for pos, test in enumerate(filters, 1):
                if not test(event):
                    out.append(pos)
                    break
            else:
                out.append(MATCHED)
                found[wi] = ti
                break
        return tuple(out)

    def evaluate(
        self, event: NormalisedEvent, *, trace: bool = True, check: Callable[[], None] | None = None
    ) -> MatchResult:
        """Decide every workflow. With ``trace``, record where each evaluated trigger stopped (triggers after
        the first match are not evaluated, as in upstream); the text is rendered when the trace is read.
        ``check``: see :meth:`first_matches` (called before each evaluated trigger)."""
        if trace:
            found, steps = self._traced(event, check)
            return MatchResult(
                event=event, names=self._names, sources=self._compiled, found=found, steps=steps, memo=self._memo
            )
        found = self.first_matches(event, check=check)
        return MatchResult(event=event, names=self._names, sources=self._compiled, found=found, steps=None)


def evaluate(
    workflows: Sequence[WorkflowTriggers],
    event: NormalisedEvent,
    *,
    trace: bool = True,
    check: Callable[[], None] | None = None,
) -> MatchResult:
    """Match every workflow against ``event`` and explain each decision (see :class:`TriggerIndex`; build
    one index per lock file to evaluate many events)."""
    return TriggerIndex(workflows).evaluate(event, trace=trace, check=check)


def needs_changed_files(workflows: Sequence[WorkflowTriggers]) -> bool:
    """True when some trigger has a path filter, so the pipeline must fetch changed files."""
    return any(tr.needs_paths for wf in workflows for tr in wf.triggers)


# Conformance entry points of spec §0 (raw lock-file dicts).


def matches(trigger: Mapping[str, object], event: NormalisedEvent) -> bool:
    """Parse a raw lock-file trigger object and match it against ``event``."""
    return trigger_matches(t.parse_trigger(trigger), event)


def workflow_matches(triggers: Sequence[Mapping[str, object] | None], event: NormalisedEvent) -> int | None:
    """Index of the first raw trigger (``null`` entries skipped) that matches, or None."""
    return first_matching_trigger([t.parse_trigger(x, f"triggers[{i}]") for i, x in enumerate(triggers)], event)
