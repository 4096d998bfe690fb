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
from kici_core.trace import (
    SUMMARY_MATCHED,
    SUMMARY_NOT_MATCHED,
    MatchResult,
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
    """A trigger's checks plus a specialised fast predicate."""

    __slots__ = ("checks", "fast", "types")

    def __init__(self, trigger: t.Trigger) -> None:
        self.types = trigger.event_types
        filters = [c for c in _filters(trigger) if c is not None]
        self.checks: tuple[mc.Check, ...] = (mc.type_check(self.types), *filters)
        self.fast: mc.Test = _specialise(self.types, [c.test for c in filters])


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
    return c.fast(event)  # type: ignore[union-attr]


def explain_trigger(trigger: t.Trigger, event: NormalisedEvent, index: int = 0) -> TriggerDecision:
    """Evaluate ``trigger`` check by check, stopping at the first failing filter."""
    entries: list[TraceEntry] = []
    if isinstance(trigger, t.UnknownTrigger):
        kind = trigger.type_name or "null"
        reason = f"unknown trigger type {mc.q(kind)} never matches"
        return TriggerDecision(index=index, trigger_type=kind, matched=False, reason=reason)
    kind = trigger.kind
    for check in _compiled(trigger).checks:
        passed = check.test(event)
        why = None if passed else check.reason(event)
        entries.append(
            TraceEntry(check=check.name, pattern=check.pattern, value=check.value(event), passed=passed, reason=why)
        )
        if not passed:
            return TriggerDecision(index=index, trigger_type=kind, matched=False, checks=tuple(entries), reason=why)
    return TriggerDecision(index=index, trigger_type=kind, matched=True, checks=tuple(entries))


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


def _explain_checked(trigger: t.Trigger, event: NormalisedEvent, index: int,
                     check: Callable[[], None] | None) -> TriggerDecision:
    if check is not None:
        check()
    return explain_trigger(trigger, event, index)


class TriggerIndex:
    """A lock file's triggers indexed by event type; build once, evaluate many events."""

    __slots__ = ("_by_type", "workflows")

    def __init__(self, workflows: Sequence[WorkflowTriggers]) -> None:
        self.workflows = tuple(workflows)
        by_type: dict[str, list[tuple[int, int, mc.Test]]] = {}
        for wi, wf in enumerate(self.workflows):
            for ti, trigger in enumerate(wf.triggers):
                fast = _compiled(trigger).fast
                for kind in trigger.event_types:
                    by_type.setdefault(kind, []).append((wi, ti, fast))
        self._by_type = {k: tuple(sorted(v, key=lambda x: (x[0], x[1]))) for k, v in by_type.items()}

    def first_matches(self, event: NormalisedEvent, *, check: Callable[[], None] | None = None) -> dict[int, int]:
        """``{workflow index: first matching trigger index}`` for the matching workflows.

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

    def evaluate(self, event: NormalisedEvent, *, trace: bool = True,
                 check: Callable[[], None] | None = None) -> MatchResult:
        """Decide every workflow. With ``trace``, record each evaluated trigger's checks
        (triggers after the first match are not evaluated, as in upstream). ``check``: see
        :meth:`first_matches` (also called before each traced trigger)."""
        found = self.first_matches(event, check=check)
        decisions: list[WorkflowDecision] = []
        for wi, wf in enumerate(self.workflows):
            hit = found.get(wi)
            details: tuple[TriggerDecision, ...] = ()
            if trace:
                last = hit if hit is not None else len(wf.triggers) - 1
                details = tuple(_explain_checked(wf.triggers[i], event, i, check) for i in range(last + 1))
            decisions.append(
                WorkflowDecision(
                    workflow_name=wf.name,
                    matched=hit is not None,
                    matched_trigger=hit,
                    summary=SUMMARY_MATCHED if hit is not None else SUMMARY_NOT_MATCHED,
                    triggers=details,
                )
            )
        return MatchResult(event_type=event.type, action=event.action, decisions=tuple(decisions))


def evaluate(workflows: Sequence[WorkflowTriggers], event: NormalisedEvent, *, trace: bool = True,
             check: Callable[[], None] | None = None) -> MatchResult:
    """Match every workflow against ``event`` and explain each decision (see :class:`TriggerIndex`)."""
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
