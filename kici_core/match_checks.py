"""The filter checks trigger matching is built from, one builder per kind of filter.

A :class:`Check` pairs a fast predicate over a :class:`~kici_core.events.NormalisedEvent` with
what the decision trace shows: the check's name, its filter as text, the event's value, and a
reason when it fails. Builders return ``None`` for an empty filter (no filter: nothing to check).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kici_core import globs, jsonpath
from kici_core import triggers as t
from kici_core.events import NormalisedEvent
from kici_core.jsontypes import JSONValue

__all__ = [
    "Check",
    "body_match",
    "comment_source",
    "context_list",
    "equals",
    "json_check",
    "member",
    "path_filter",
    "pattern_list",
    "ref_patterns",
    "repo_filter",
    "source_branches",
    "type_check",
]
Event = NormalisedEvent
Test = Callable[[Event], bool]
Getter = Callable[[Event], str]


@dataclass(frozen=True, slots=True)
class Check:
    """One filter of a trigger: its trace name, its filter as text, predicate, value and failure reason.

    ``keyed``: the predicate and the reason depend on the event only through ``value(event)``, so a trace
    rendered for one value holds for every event with that value.
    """

    name: str
    pattern: str
    test: Test
    value: Callable[[Event], str]
    reason: Callable[[Event], str]
    keyed: bool = False


_dumps = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(..., ensure_ascii=False) without its set-up


def q(value: str) -> str:
    """``value`` as a JSON string literal (for trace messages)."""
    return _dumps(value)


def qlist(values: Sequence[str]) -> str:
    """``values`` as a JSON array literal (for trace messages)."""
    return _dumps(list(values))


@functools.cache
def payload_str(*keys: str) -> Getter:
    """Getter of the string at ``payload[keys[0]][keys[1]]...``; ``""`` when absent or not a string.

    One getter per path (cached), so checks reading the same field share it (see :class:`Check`)."""

    def get(e: Event) -> str:
        value = jsonpath.get_in(e.payload, keys)
        return value if isinstance(value, str) else ""

    return get


def event_type(e: Event) -> str:
    """The event's type."""
    return e.type


def source_repo(e: Event) -> str:
    """The event's source repository, ``""`` when it has none."""
    return e.source_repo or ""


def action(e: Event) -> str:
    """The event's action, ``""`` when it has none."""
    return e.action or ""


def target(e: Event) -> str:
    """The event's target branch (or tag)."""
    return e.target_branch


def type_check(types: frozenset[str]) -> Check:
    """The event-type check every trigger starts with."""
    shown = next(iter(types)) if len(types) == 1 else qlist(sorted(types))
    return Check(
        "event type",
        shown,
        lambda e: e.type in types,
        event_type,
        lambda e: f"event type: {q(e.type)} is not {shown if len(types) != 1 else q(shown)}",
        keyed=True,
    )


def member(name: str, allowed: Sequence[str], get: Getter) -> Check | None:
    """``get(event)`` must be one of ``allowed``."""
    if not allowed:
        return None
    allowed_set = frozenset(allowed)
    shown = qlist(allowed)

    def reason(e: Event) -> str:
        v = get(e)
        return f"{name}: {q(v) if v else '(none)'} is not one of {shown}"

    return Check(name, shown, lambda e: get(e) in allowed_set, get, reason, keyed=True)


def equals(name: str, expected: str | None, get: Getter) -> Check | None:
    """``get(event)`` must equal ``expected``."""
    if not expected:
        return None
    return Check(
        name,
        expected,
        lambda e: get(e) == expected,
        get,
        lambda e: f"{name}: {q(get(e))} is not {q(expected)}",
        keyed=True,
    )


def pattern_test(patterns: Sequence[t.LockBranchPattern]) -> Callable[[str], bool]:
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


def pattern_list(name: str, patterns: Sequence[t.LockBranchPattern], get: Getter) -> Check | None:
    """``get(event)`` must match one of the glob/regex ``patterns``."""
    if not patterns:
        return None
    test = pattern_test(patterns)
    shown = qlist([p.display() for p in patterns])
    test_event: Test = lambda e: test(get(e))  # noqa: E731
    if get is target and all(p.type == "glob" for p in patterns):
        # the common "branches" filter in one call: one regex over the target branch
        full = globs.compile_glob_list(tuple(p.pattern for p in patterns)).fullmatch  # type: ignore[union-attr]
        test_event = lambda e: full(e.target_branch) is not None  # noqa: E731
    return Check(
        name,
        shown,
        test_event,
        get,
        lambda e: f"{name}: {q(get(e))} matched none of {shown}",
        keyed=True,
    )


def source_branches(patterns: Sequence[t.LockBranchPattern]) -> Check | None:
    """The PR head branch must exist and match one of ``patterns``."""
    if not patterns:
        return None
    test = pattern_test(patterns)
    shown = qlist([p.display() for p in patterns])

    def reason(e: Event) -> str:
        if e.source_branch is None:
            return "sourceBranches: the event has no source branch"
        return f"sourceBranches: {q(e.source_branch)} matched none of {shown}"

    return Check(
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


def path_filter(paths: Sequence[str]) -> Check | None:
    """Some changed file must pass the include/``!``exclude globs of ``paths``."""
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

    shown = qlist(paths)

    def reason(e: Event) -> str:
        files = e.changed_files or ()
        if not files:
            return "paths: the event has no changed files"
        if exc_full is not None and all(exc_full(f) is not None for f in files):
            return f"paths: all {len(files)} changed files are excluded by {shown}"
        return f"paths: none of {len(files)} changed files matched {shown}"

    return Check("paths", shown, test, _files_value, reason)


def repo_filter(repos: Sequence[t.LockBranchPattern]) -> Check | None:
    """The source repository must match an include pattern and no ``!`` exclusion."""
    if not repos:
        return None
    inc = [r for r in repos if not r.pattern.startswith("!")]
    exc = [
        t.LockBranchPattern(type=r.type, pattern=r.pattern[1:], flags=r.flags)
        for r in repos
        if r.pattern.startswith("!")
    ]
    inc_test = pattern_test(inc) if inc else None
    exc_test = pattern_test(exc) if exc else None

    def test(e: Event) -> bool:
        repo = e.source_repo
        if not repo:
            return False
        if exc_test is not None and exc_test(repo):
            return False
        return inc_test is None or inc_test(repo)

    shown = qlist([r.display() for r in repos])

    def reason(e: Event) -> str:
        if not e.source_repo:
            return "repos: the event has no source repository"
        if exc_test is not None and exc_test(e.source_repo):
            return f"repos: {q(e.source_repo)} is excluded by {shown}"
        return f"repos: {q(e.source_repo)} matched none of {shown}"

    return Check("repos", shown, test, source_repo, reason, keyed=True)


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


def json_check(
    name: str, conds: Sequence[t.JsonCondition], doc: Callable[[Event], JSONValue], negate: bool
) -> Check | None:
    """JSONPath conditions over ``doc(event)``: all must hold, or (``negate``) none may."""
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

    return Check(name, shown, test, lambda e: "", reason)


def inner_payload(e: Event) -> JSONValue:
    """The ``payload`` field of an internal event's envelope."""
    return e.payload.get("payload")


def whole_payload(e: Event) -> JSONValue:
    """The whole payload of the event."""
    return e.payload


def comment_source(source: str | None) -> Check | None:
    """The comment must be on an issue or on a pull request, as ``source`` says."""
    if not source:
        return None

    def is_pr(e: Event) -> bool:
        issue = e.payload.get("issue")
        return isinstance(issue, Mapping) and "pull_request" in issue

    def kind(e: Event) -> str:
        return "pr" if is_pr(e) else "issue"

    return Check(
        "source",
        source,
        lambda e: kind(e) == source,
        kind,
        lambda e: f"source: comment is on {kind(e)}, not {source}",
        keyed=True,
    )


def body_match(pattern: t.LockBranchPattern | None) -> Check | None:
    """The comment body must match the glob or regex ``pattern``."""
    if pattern is None or not pattern.pattern:
        return None
    get = payload_str("comment", "body")
    if pattern.type == "glob":
        full = globs.compile_glob(pattern.pattern).fullmatch
        test: Test = lambda e: full(get(e)) is not None  # noqa: E731
    else:
        search = globs.compile_js_regex(pattern.pattern, pattern.flags).search
        test = lambda e: search(get(e)) is not None  # noqa: E731
    shown = pattern.display()
    return Check("bodyMatch", shown, test, get, lambda e: f"bodyMatch: comment body does not match {shown}", keyed=True)


def ref_patterns(patterns: Sequence[t.LockBranchPattern]) -> Check | None:
    """``payload.ref`` must be present and match one of ``patterns`` (create/delete)."""
    check = pattern_list("patterns", patterns, payload_str("ref"))
    if check is None:
        return None
    inner = check.test
    # A create/delete event without payload.ref never matches a non-empty pattern list.
    return Check(
        check.name,
        check.pattern,
        lambda e: isinstance(e.payload.get("ref"), str) and inner(e),
        check.value,
        check.reason,
    )


def context_list(contexts: Sequence[str]) -> Check | None:
    """The status context must match one of the ``contexts`` globs."""
    if not contexts:
        return None
    full = globs.compile_glob_list(tuple(contexts)).fullmatch  # type: ignore[union-attr]
    get = payload_str("context")
    shown = qlist(contexts)
    return Check(
        "contexts",
        shown,
        lambda e: full(get(e)) is not None,
        get,
        lambda e: f"contexts: {q(get(e))} matched none of {shown}",
        keyed=True,
    )
