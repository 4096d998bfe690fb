"""The compact decision trace renders exactly what eager, check-by-check rendering produced.

Random lock files (many trigger kinds and filters) and random events are evaluated through one
``TriggerIndex`` (so the rendering memo is shared across events, as in the pipeline) and compared with the
reference in ``tests/support/trace_reference.py``: the stored JSON (``to_dict``, key order included), the
rendered objects, the forwarded summaries and the untraced decision.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import matching as m
from kici_core import triggers as t
from kici_core.events import NormalisedEvent
from tests.support import trace_reference
from tests.support.props import examples

BRANCHES = ["main", "develop", "release/1.2", "feature/a/b", "v1.0", "team3/x", "", ".hidden", "héllo wörld"]
REPOS = ["acme/api", "acme/web", "other/api"]
FILES = ["src/a.py", "docs/x.md", "src/__fixtures__/f.json", "lib/b/c.ts", "README.md", "x.snap"]


def _pattern(values: list[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.builds(lambda p: {"type": "glob", "pattern": p}, st.sampled_from(values)),
        st.builds(
            lambda p, f: {"type": "regex", "pattern": p, "flags": f},
            st.sampled_from(["^v\\d", "x$", "main", "^team\\d+/", "a"]),
            st.sampled_from(["", "i"]),
        ),
    )


BRANCH_PATTERNS = st.lists(
    _pattern(["main", "release/*", "!wip", "feature/**", "{main,develop}", "v*", "**"]), max_size=3
)
REPO_PATTERNS = st.lists(_pattern(["acme/*", "!acme/web", "other/api"]), max_size=2)
PATHS = st.lists(st.sampled_from(["src/**", "docs/*.md", "!**/*.snap", "!**/__fixtures__/**", "*.md"]), max_size=3)
ACTIONS = st.lists(st.sampled_from(["opened", "synchronize", "closed", "created", "deploy"]), max_size=2, unique=True)

TRIGGERS: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.builds(
        lambda b, p, r: {"_type": "push", "branches": b, "paths": p, "repos": r}, BRANCH_PATTERNS, PATHS, REPO_PATTERNS
    ),
    st.builds(lambda b, p: {"_type": "push", "branches": b, "paths": p}, BRANCH_PATTERNS, st.just([])),
    st.builds(
        lambda e, tb, sb, p: {"_type": "pr", "events": e, "targetBranches": tb, "sourceBranches": sb, "paths": p},
        ACTIONS,
        BRANCH_PATTERNS,
        BRANCH_PATTERNS,
        PATHS,
    ),
    st.builds(lambda p, r: {"_type": "tag", "patterns": p, "repos": r}, BRANCH_PATTERNS, REPO_PATTERNS),
    st.builds(lambda ty: {"_type": "dispatch", "types": ty}, ACTIONS),
    st.builds(
        lambda a, b: {"_type": "comment", "actions": a, "bodyMatch": b},
        ACTIONS,
        st.one_of(st.none(), _pattern(["/deploy*", "*lgtm*"])),
    ),
    st.builds(
        lambda rt, p: {"_type": "create", "refTypes": rt, "patterns": p},
        st.lists(st.sampled_from(["branch", "tag"]), max_size=1),
        BRANCH_PATTERNS,
    ),
    st.builds(
        lambda c: {"_type": "status", "contexts": c, "states": ["success"]},
        st.lists(st.sampled_from(["ci/*", "lint"]), max_size=2),
    ),
    st.builds(lambda c: {"_type": "schedule", "cronExpression": c}, st.sampled_from(["0 * * * *", "5 4 * * *"])),
    st.builds(lambda n: {"_type": n}, st.sampled_from(["future", "push"])),
)

WORKFLOWS = st.lists(st.lists(TRIGGERS, max_size=3), min_size=1, max_size=6)

EVENTS = st.builds(
    lambda ty, action, branch, source, files, repo, payload: NormalisedEvent(
        type=ty,
        action=action,
        target_branch=branch,
        source_branch=source,
        changed_files=None if files is None else tuple(files),
        source_repo=repo,
        payload=payload,
    ),
    st.sampled_from(["push", "pull_request", "tag", "dispatch", "comment", "create", "status", "schedule"]),
    st.one_of(st.none(), st.sampled_from(["opened", "synchronize", "created", "deploy"])),
    st.sampled_from(BRANCHES),
    st.one_of(st.none(), st.sampled_from(BRANCHES)),
    st.one_of(st.none(), st.lists(st.sampled_from(FILES), max_size=7)),
    st.one_of(st.none(), st.sampled_from(REPOS)),
    st.fixed_dictionaries(
        {},
        optional={
            "ref": st.sampled_from(["main", "v1.0", "feature/a/b"]),
            "ref_type": st.sampled_from(["branch", "tag"]),
            "comment": st.fixed_dictionaries({"body": st.sampled_from(["/deploy now", "lgtm!", "no"])}),
            "context": st.sampled_from(["ci/build", "lint", "other"]),
            "state": st.sampled_from(["success", "failure"]),
            "cronExpression": st.sampled_from(["0 * * * *", "1 1 * * *"]),
        },
    ),
)


def _variants(event: NormalisedEvent) -> list[NormalisedEvent]:
    """``event`` and look-alikes whose trace values agree but whose decisions may not (a memo keyed on too
    little would return the first one's rendering for the others)."""
    files = event.changed_files or ()
    payload = dict(event.payload)
    payload.pop("ref", None)
    return [
        event,
        dataclasses.replace(event, source_branch="" if event.source_branch is None else None),
        event.with_changed_files([*files, *files, "src/z.py"]),
        dataclasses.replace(event, payload={**payload, "ref": 5}),
    ]


def _workflows(raw: list[list[dict[str, Any]]]) -> list[m.WorkflowTriggers]:
    return [
        m.WorkflowTriggers(name=f"wf-{i}", triggers=tuple(t.parse_trigger(x) for x in trigs))
        for i, trigs in enumerate(raw)
    ]


@settings(max_examples=examples(30), deadline=None)
@given(WORKFLOWS, st.lists(EVENTS, min_size=1, max_size=6))
def test_lazy_trace_equals_eager_rendering(raw: list[list[dict[str, Any]]], events: list[NormalisedEvent]) -> None:
    workflows = _workflows(raw)
    index = m.TriggerIndex(workflows)
    stream = [v for e in events for v in _variants(e)]
    for event in [*stream, *stream]:  # the second pass renders from the memo
        expected = trace_reference.evaluate_dict(workflows, event)
        result = index.evaluate(event, trace=True)
        stored = result.to_dict()
        assert json.dumps(stored) == json.dumps(expected)  # same JSON text: same values and key order
        assert stored == m.evaluate(workflows, event).to_dict()
        # the objects render the same, and the forwarded summaries agree with the stored decisions
        fresh = index.evaluate(event, trace=True)
        assert [d.to_dict() for d in fresh.decisions] == expected["decisions"]
        assert [d.summary_dict() for d in result.decisions] == [
            {k: v for k, v in d.items() if k != "triggers"}
            for d in expected["decisions"]  # type: ignore[union-attr]
        ]
        assert list(result.matched_names) == expected["matchedWorkflows"]
        untraced = index.evaluate(event, trace=False)
        assert untraced.matched_names == result.matched_names
        assert all(d.triggers == () and d.checks_count == 0 for d in untraced.decisions)


@settings(max_examples=examples(30), deadline=None)
@given(st.lists(TRIGGERS, min_size=1, max_size=1), EVENTS)
def test_explain_trigger_equals_eager_rendering(raw: list[dict[str, Any]], event: NormalisedEvent) -> None:
    trigger = t.parse_trigger(raw[0])
    matched, _, expected = trace_reference.trigger_dict(trigger, event, 3)
    decision = m.explain_trigger(trigger, event, 3)
    assert decision.to_dict() == expected
    assert decision.matched is matched is m.trigger_matches(trigger, event)


def test_memo_is_bounded_and_keyed_by_values() -> None:
    workflows = _workflows([[{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}]}]] * 3)
    index = m.TriggerIndex(workflows)
    seen = []
    for i in range(5_000):
        event = NormalisedEvent(type="push", target_branch=f"feature/{i}")
        seen.append(index.evaluate(event).to_dict())
    assert seen[4_999]["decisions"][0]["triggers"][0]["reason"] == (  # type: ignore[index]
        'branches: "feature/4999" matched none of ["main"]'
    )
    assert len(index._memo) <= index._memo.max_entries
