"""Trigger matching (spec §4): which workflows a normalised event starts, and why.

Each trigger is compiled once into a list of checks (its filters, in the spec's order, AND-ed);
the compiled form is cached on the trigger object. :func:`trigger_matches` runs the fast path;
:class:`TriggerIndex` indexes a whole lock file's triggers by event type and produces a
:class:`MatchResult` with a decision trace that says, for every workflow and trigger, whether it
matched or which filter rejected it and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kici_core import globs
from kici_core import triggers as t
from kici_core.events import NormalisedEvent
from kici_core.jsontypes import JSONValue

__all__ = [
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

SUMMARY_MATCHED = "Trigger conditions met"
SUMMARY_NOT_MATCHED = "No matching trigger"

# ---------------------------------------------------------------------------------------------
# Decision trace
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceEntry:
    """One evaluated check: ``check`` name, the filter (``pattern``), the event's ``value``."""

    check: str
    pattern: str
    value: str
    passed: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe form ``{check, pattern, value, passed, reason?}``."""
        d: dict[str, JSONValue] = {
            "check": self.check,
            "pattern": self.pattern,
            "value": self.value,
            "passed": self.passed,
        }
        if self.reason is not None:
            d["reason"] = self.reason
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerDecision:
    """Outcome of one trigger: checks run until the first failure; ``reason`` names it."""

    index: int
    trigger_type: str
    matched: bool
    checks: tuple[TraceEntry, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe form."""
        return {
            "index": self.index,
            "triggerType": self.trigger_type,
            "matched": self.matched,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowDecision:
    """Outcome of one workflow; ``triggers`` holds the evaluated triggers (empty without trace)."""

    workflow_name: str
    matched: bool
    matched_trigger: int | None
    summary: str
    triggers: tuple[TriggerDecision, ...] = ()

    @property
    def checks_count(self) -> int:
        """Number of checks evaluated across this workflow's triggers."""
        return sum(len(d.checks) for d in self.triggers)

    def summary_dict(self) -> dict[str, JSONValue]:
        """``{workflowName, matched, matchedTrigger, summary, checksCount}`` (as forwarded upstream)."""
        return {
            "workflowName": self.workflow_name,
            "matched": self.matched,
            "matchedTrigger": self.matched_trigger,
            "summary": self.summary,
            "checksCount": self.checks_count,
        }

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe form: the summary plus every trigger decision."""
        d = self.summary_dict()
        d["triggers"] = [x.to_dict() for x in self.triggers]
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchResult:
    """Every workflow's decision for one event, in lock-file order."""

    event_type: str
    action: str | None
    decisions: tuple[WorkflowDecision, ...]

    @property
    def matched(self) -> tuple[WorkflowDecision, ...]:
        """The matching workflows (each becomes its own run)."""
        return tuple(d for d in self.decisions if d.matched)

    @property
    def matched_names(self) -> tuple[str, ...]:
        """Names of the matching workflows."""
        return tuple(d.workflow_name for d in self.decisions if d.matched)

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe form (stored in the event log)."""
        return {
            "eventType": self.event_type,
            "action": self.action,
            "matchedWorkflows": list(self.matched_names),
            "totalWorkflows": len(self.decisions),
            "decisions": [d.to_dict() for d in self.decisions],
        }


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

Event = NormalisedEvent
Test = Callable[[Event], bool]
Getter = Callable[[Event], str]


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    pattern: str
    test: Test
    value: Callable[[Event], str]
    reason: Callable[[Event], str]


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _qlist(values: Sequence[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False)


def _payload_str(*keys: str) -> Getter:
    def get(e: Event) -> str:
        node: object = e.payload
        for k in keys:
            if not isinstance(node, Mapping):
                return ""
            node = node.get(k)
        return node if isinstance(node, str) else ""

    return get


def _action(e: Event) -> str:
    return e.action or ""


def _target(e: Event) -> str:
    return e.target_branch


def _type_check(types: frozenset[str]) -> _Check:
    shown = next(iter(types)) if len(types) == 1 else _qlist(sorted(types))
    return _Check(
        "event type",
        shown,
        lambda e: e.type in types,
        lambda e: e.type,
        lambda e: f"event type: {_q(e.type)} is not {shown if len(types) != 1 else _q(shown)}",
    )


def _member(name: str, allowed: Sequence[str], get: Getter) -> _Check | None:
    if not allowed:
        return None
    allowed_set = frozenset(allowed)
    shown = _qlist(allowed)

    def reason(e: Event) -> str:
        v = get(e)
        return f"{name}: {_q(v) if v else '(none)'} is not one of {shown}"

    return _Check(name, shown, lambda e: get(e) in allowed_set, get, reason)


def _equals(name: str, expected: str | None, get: Getter) -> _Check | None:
    if not expected:
        return None
    return _Check(
        name,
        expected,
        lambda e: get(e) == expected,
        get,
        lambda e: f"{name}: {_q(get(e))} is not {_q(expected)}",
    )


def _pattern_test(patterns: Sequence[t.LockBranchPattern]) -> Callable[[str], bool]:
    """OR of branch patterns: globs in one alternation, regexes searched one by one."""
    glob_re = globs.compile_glob_list(tuple(p.pattern for p in patterns if p.type == "glob"))
    regexes = [globs.compile_js_regex(p.pattern, p.flags).search for p in patterns if p.type == "regex"]
    full = glob_re.fullmatch if glob_re is not None else None
    if full is not None and not regexes:
        return lambda v: full(v) is not None
    if full is None and len(regexes) == 1:
        one = regexes[0]
        return lambda v: one(v) is not None

    def test(v: str) -> bool:
        if full is not None and full(v) is not None:
            return True
        return any(s(v) is not None for s in regexes)

    return test


def _patterns(name: str, patterns: Sequence[t.LockBranchPattern], get: Getter) -> _Check | None:
    if not patterns:
        return None
    test = _pattern_test(patterns)
    shown = _qlist([p.display() for p in patterns])
    return _Check(
        name,
        shown,
        lambda e: test(get(e)),
        get,
        lambda e: f"{name}: {_q(get(e))} matched none of {shown}",
    )


def _source_branches(patterns: Sequence[t.LockBranchPattern]) -> _Check | None:
    if not patterns:
        return None
    test = _pattern_test(patterns)
    shown = _qlist([p.display() for p in patterns])

    def reason(e: Event) -> str:
        if e.source_branch is None:
            return "sourceBranches: the event has no source branch"
        return f"sourceBranches: {_q(e.source_branch)} matched none of {shown}"

    return _Check(
        "sourceBranches",
        shown,
        lambda e: e.source_branch is not None and test(e.source_branch),
        lambda e: e.source_branch or "",
        reason,
    )


def _files_value(e: Event) -> str:
    files = e.changed_files or ()
    head = ", ".join(files[:5])
    return head + (f", … (+{len(files) - 5} more)" if len(files) > 5 else "")


def _paths(paths: Sequence[str]) -> _Check | None:
    if not paths:
        return None
    include = tuple(p for p in paths if not p.startswith("!"))
    exclude = tuple(p[1:] for p in paths if p.startswith("!"))
    exc = globs.compile_glob_list(exclude)
    exc_full = exc.fullmatch if exc is not None else None
    # "some file is not excluded and matches an include" in one regex call per file, iterated
    # in C by map(); Match objects are truthy.
    wanted = globs.compile_path_filter(include, exclude).fullmatch

    def test(e: Event) -> bool:
        files = e.changed_files
        return bool(files) and any(map(wanted, files))  # type: ignore[arg-type]

    shown = _qlist(paths)

    def reason(e: Event) -> str:
        files = e.changed_files or ()
        if not files:
            return "paths: the event has no changed files"
        if exc_full is not None and all(exc_full(f) is not None for f in files):
            return f"paths: all {len(files)} changed files are excluded by {shown}"
        return f"paths: none of {len(files)} changed files matched {shown}"

    return _Check("paths", shown, test, _files_value, reason)


def _repos(repos: Sequence[t.LockBranchPattern]) -> _Check | None:
    if not repos:
        return None
    inc = [r for r in repos if not r.pattern.startswith("!")]
    exc = [
        t.LockBranchPattern(type=r.type, pattern=r.pattern[1:], flags=r.flags)
        for r in repos
        if r.pattern.startswith("!")
    ]
    inc_test = _pattern_test(inc) if inc else None
    exc_test = _pattern_test(exc) if exc else None

    def test(e: Event) -> bool:
        repo = e.source_repo
        if not repo:
            return False
        if exc_test is not None and exc_test(repo):
            return False
        return inc_test is None or inc_test(repo)

    shown = _qlist([r.display() for r in repos])

    def reason(e: Event) -> str:
        if not e.source_repo:
            return "repos: the event has no source repository"
        if exc_test is not None and exc_test(e.source_repo):
            return f"repos: {_q(e.source_repo)} is excluded by {shown}"
        return f"repos: {_q(e.source_repo)} matched none of {shown}"

    return _Check("repos", shown, test, lambda e: e.source_repo or "", reason)


def _js_equal(a: JSONValue, b: JSONValue) -> bool:
    """JavaScript ``===`` for JSON values (objects and arrays are never equal)."""
    if isinstance(a, Mapping | list) or isinstance(b, Mapping | list):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _condition_holds(cond: t.JsonCondition, doc: JSONValue) -> bool:
    results = cond.path.find(doc)
    if not results:
        return False
    if isinstance(cond.expected, list):
        options = cond.expected
        return any(_js_equal(r, o) for r in results for o in options)
    if cond.regex is not None:
        search = cond.regex.search
        return any(isinstance(r, str) and search(r) is not None for r in results)
    return any(_js_equal(r, cond.expected) for r in results)


def _json_check(
    name: str, conds: Sequence[t.JsonCondition], doc: Callable[[Event], JSONValue], negate: bool
) -> _Check | None:
    if not conds:
        return None
    shown = json.dumps({c.path.source: c.expected for c in conds}, ensure_ascii=False, default=str)

    def test(e: Event) -> bool:
        d = doc(e)
        if negate:
            return not any(_condition_holds(c, d) for c in conds)
        return all(_condition_holds(c, d) for c in conds)

    def reason(e: Event) -> str:
        d = doc(e)
        for c in conds:
            holds = _condition_holds(c, d)
            if holds == negate:
                found = c.path.find(d)
                got = json.dumps(found[0], default=str) if found else "nothing"
                verb = "matched" if negate else "expected"
                return f"{name}: {c.path.source} is {got}, {verb} {json.dumps(c.expected, default=str)}"
        return f"{name}: failed"

    return _Check(name, shown, test, lambda e: "", reason)


def _inner_payload(e: Event) -> JSONValue:
    return e.payload.get("payload")


def _whole_payload(e: Event) -> JSONValue:
    return e.payload


def _comment_source(source: str | None) -> _Check | None:
    if not source:
        return None

    def is_pr(e: Event) -> bool:
        issue = e.payload.get("issue")
        return isinstance(issue, Mapping) and "pull_request" in issue

    def kind(e: Event) -> str:
        return "pr" if is_pr(e) else "issue"

    return _Check(
        "source", source, lambda e: kind(e) == source, kind, lambda e: f"source: comment is on {kind(e)}, not {source}"
    )


def _body_match(pattern: t.LockBranchPattern | None) -> _Check | None:
    if pattern is None or not pattern.pattern:
        return None
    get = _payload_str("comment", "body")
    if pattern.type == "glob":
        full = globs.compile_glob(pattern.pattern).fullmatch
        test: Test = lambda e: full(get(e)) is not None  # noqa: E731
    else:
        search = globs.compile_js_regex(pattern.pattern, pattern.flags).search
        test = lambda e: search(get(e)) is not None  # noqa: E731
    shown = pattern.display()
    return _Check("bodyMatch", shown, test, get, lambda e: f"bodyMatch: comment body does not match {shown}")


def _ref_patterns(patterns: Sequence[t.LockBranchPattern]) -> _Check | None:
    check = _patterns("patterns", patterns, _payload_str("ref"))
    if check is None:
        return None
    inner = check.test
    # A create/delete event without payload.ref never matches a non-empty pattern list.
    return _Check(
        check.name,
        check.pattern,
        lambda e: isinstance(e.payload.get("ref"), str) and inner(e),
        check.value,
        check.reason,
    )


def _contexts(contexts: Sequence[str]) -> _Check | None:
    if not contexts:
        return None
    full = globs.compile_glob_list(tuple(contexts)).fullmatch  # type: ignore[union-attr]
    get = _payload_str("context")
    shown = _qlist(contexts)
    return _Check(
        "contexts",
        shown,
        lambda e: full(get(e)) is not None,
        get,
        lambda e: f"contexts: {_q(get(e))} matched none of {shown}",
    )


def _filters(trigger: t.Trigger) -> list[_Check | None]:
    """The filters of a trigger after its event-type check, in the spec's order (§4.3)."""
    match trigger:
        case t.PushTrigger():
            return [
                _patterns("branches", trigger.branches, _target),
                _paths(trigger.paths),
                _repos(trigger.repos),
            ]
        case t.PrTrigger():
            return [
                _member("events", trigger.events, _action),
                _patterns("targetBranches", trigger.target_branches, _target),
                _source_branches(trigger.source_branches),
                _paths(trigger.paths),
                _repos(trigger.repos),
            ]
        case t.TagTrigger():
            return [_patterns("patterns", trigger.patterns, _target), _repos(trigger.repos)]
        case t.DispatchTrigger():
            return [_member("types", trigger.types, _action), _repos(trigger.repos)]
        case t.ReleaseTrigger() | t.ReviewCommentTrigger() | t.StarTrigger() | t.WatchTrigger():
            return [_member("actions", trigger.actions, _action), _repos(trigger.repos)]
        case t.ReviewTrigger():
            return [
                _member("actions", trigger.actions, _action),
                _member("states", trigger.states, _payload_str("review", "state")),
                _repos(trigger.repos),
            ]
        case t.CommentTrigger():
            return [
                _member("actions", trigger.actions, _action),
                _comment_source(trigger.source),
                _body_match(trigger.body_match),
                _repos(trigger.repos),
            ]
        case t.CreateTrigger() | t.DeleteTrigger():
            return [
                _member("refTypes", trigger.ref_types, _payload_str("ref_type")),
                _ref_patterns(trigger.patterns),
                _repos(trigger.repos),
            ]
        case t.StatusTrigger():
            return [
                _contexts(trigger.contexts),
                _member("states", trigger.states, _payload_str("state")),
                _repos(trigger.repos),
            ]
        case t.WorkflowRunTrigger():
            return [
                _member("actions", trigger.actions, _action),
                _member("workflows", trigger.workflows, _payload_str("workflow_run", "name")),
                _member("conclusions", trigger.conclusions, _payload_str("workflow_run", "conclusion")),
                _repos(trigger.repos),
            ]
        case t.ForkTrigger():
            return [_repos(trigger.repos)]
        case t.WebhookTrigger():
            return [_member("actions", trigger.actions, _action), _repos(trigger.repos)]
        case t.ScheduleTrigger():
            cron = trigger.cron_expression
            get = _payload_str("cronExpression")
            return [
                _Check(
                    "cronExpression",
                    cron,
                    lambda e: get(e) == cron,
                    get,
                    lambda e: f"cronExpression: {_q(get(e))} is not {_q(cron)}",
                )
            ]
        case t.KiciEventTrigger():
            return [
                _Check(
                    "eventName",
                    trigger.event_name,
                    (lambda name: lambda e: _payload_str("eventName")(e) == name)(trigger.event_name),
                    _payload_str("eventName"),
                    lambda e: f"eventName: {_q(_payload_str('eventName')(e))} is not {_q(trigger.event_name)}",
                ),
                _json_check("match", trigger.match, _inner_payload, negate=False),
                _json_check("not", trigger.not_, _inner_payload, negate=True),
                _equals("source", trigger.source, _payload_str("sourceRepo")),
            ]
        case t.WorkflowCompleteTrigger():
            return [
                _equals("name", trigger.name, _payload_str("workflowName")),
                _member("status", trigger.status, _payload_str("status")),
                _equals("source", trigger.source, _payload_str("sourceRepo")),
            ]
        case t.JobCompleteTrigger():
            return [
                _equals("workflow", trigger.workflow, _payload_str("workflowName")),
                _equals("job", trigger.job, _payload_str("jobName")),
                _member("status", trigger.status, _payload_str("status")),
                _equals("source", trigger.source, _payload_str("sourceRepo")),
            ]
        case t.GenericWebhookTrigger():
            source = trigger.source
            get_source = _payload_str("source")

            def event_name(e: Event) -> str:
                return _payload_str("eventType")(e) or e.action or ""

            return [
                _Check(
                    "source",
                    source,
                    lambda e: get_source(e) == source,
                    get_source,
                    lambda e: f"source: {_q(get_source(e))} is not {_q(source)}",
                ),
                _member("events", trigger.events, event_name),
                _json_check("match", trigger.match, _whole_payload, negate=False),
                _json_check("not", trigger.not_, _whole_payload, negate=True),
            ]
        case t.LifecycleTrigger():
            return [
                _member("events", trigger.events, _payload_str("lifecycleEvent")),
                _member("sources", trigger.sources, _payload_str("sourceRepo")),
            ]
        case t.UnknownTrigger():
            return []


class _Compiled:
    """A trigger's checks plus a specialised fast predicate."""

    __slots__ = ("checks", "fast", "types")

    def __init__(self, trigger: t.Trigger) -> None:
        self.types = trigger.event_types
        filters = [c for c in _filters(trigger) if c is not None]
        self.checks: tuple[_Check, ...] = (_type_check(self.types), *filters)
        self.fast: Test = _specialise(self.types, [c.test for c in filters])


def _specialise(types: frozenset[str], tests: list[Test]) -> Test:
    """One closure for type check + filters, unrolled for the common small counts."""
    if not types:
        return lambda e: False
    if len(types) == 1:
        (only,) = types
        type_ok: Test = lambda e: e.type == only  # noqa: E731
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

    def run_all(e: Event) -> bool:
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
        reason = f"unknown trigger type {_q(kind)} never matches"
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


class TriggerIndex:
    """A lock file's triggers indexed by event type; build once, evaluate many events."""

    __slots__ = ("_by_type", "workflows")

    def __init__(self, workflows: Sequence[WorkflowTriggers]) -> None:
        self.workflows = tuple(workflows)
        by_type: dict[str, list[tuple[int, int, Test]]] = {}
        for wi, wf in enumerate(self.workflows):
            for ti, trigger in enumerate(wf.triggers):
                fast = _compiled(trigger).fast
                for kind in trigger.event_types:
                    by_type.setdefault(kind, []).append((wi, ti, fast))
        self._by_type = {k: tuple(sorted(v, key=lambda x: (x[0], x[1]))) for k, v in by_type.items()}

    def first_matches(self, event: NormalisedEvent) -> dict[int, int]:
        """``{workflow index: first matching trigger index}`` for the matching workflows."""
        found: dict[int, int] = {}
        for wi, ti, fast in self._by_type.get(event.type, ()):
            if wi not in found and fast(event):
                found[wi] = ti
        return found

    def evaluate(self, event: NormalisedEvent, *, trace: bool = True) -> MatchResult:
        """Decide every workflow. With ``trace``, record each evaluated trigger's checks
        (triggers after the first match are not evaluated, as in upstream)."""
        found = self.first_matches(event)
        decisions: list[WorkflowDecision] = []
        for wi, wf in enumerate(self.workflows):
            hit = found.get(wi)
            details: tuple[TriggerDecision, ...] = ()
            if trace:
                last = hit if hit is not None else len(wf.triggers) - 1
                details = tuple(explain_trigger(wf.triggers[i], event, i) for i in range(last + 1))
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


def evaluate(workflows: Sequence[WorkflowTriggers], event: NormalisedEvent, *, trace: bool = True) -> MatchResult:
    """Match every workflow against ``event`` and explain each decision (see :class:`TriggerIndex`)."""
    return TriggerIndex(workflows).evaluate(event, trace=trace)


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
