"""Trigger matching rules (spec §4) and the decision trace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kici_core import matching as m
from kici_core import triggers as t
from kici_core.events import NormalisedEvent


def g(p: str) -> dict[str, str]:
    return {"type": "glob", "pattern": p}


def rx(p: str, flags: str = "") -> dict[str, str]:
    return {"type": "regex", "pattern": p, "flags": flags}


def ev(type_: str = "push", **kw: Any) -> NormalisedEvent:
    kw.setdefault("source_repo", "myorg/api")
    if "changed_files" in kw and kw["changed_files"] is not None:
        kw["changed_files"] = tuple(kw["changed_files"])
    return NormalisedEvent(type=type_, **kw)


def push(**kw: Any) -> t.Trigger:
    return t.parse_trigger({"_type": "push", **kw})


# --- §4.4 branch lists ----------------------------------------------------------------------


def test_branch_list_is_plain_or() -> None:
    trig = push(branches=[g("main"), g("release/*")])
    assert m.trigger_matches(trig, ev(target_branch="release/2.0"))
    assert not m.trigger_matches(trig, ev(target_branch="feature/x"))
    assert m.trigger_matches(push(branches=[]), ev(target_branch="anything"))


def test_branch_negation_is_not_an_exclusion() -> None:
    trig = push(branches=[g("feature/*"), g("!feature/wip")])
    assert m.trigger_matches(trig, ev(target_branch="feature/wip"))  # via the first entry
    assert m.trigger_matches(trig, ev(target_branch="main"))  # via the negated entry


def test_regex_branches_search_unanchored() -> None:
    assert m.trigger_matches(push(branches=[rx("rel")]), ev(target_branch="my-release"))
    assert not m.trigger_matches(push(branches=[rx("^release\\/v\\d+$")]), ev(target_branch="release/vx"))
    assert m.trigger_matches(push(branches=[rx("^MAIN$", "i")]), ev(target_branch="main"))


def test_tag_push_never_matches_push_trigger() -> None:
    tag_event = ev("tag", target_branch="v1.0.0")
    assert not m.trigger_matches(push(branches=[]), tag_event)
    assert m.trigger_matches(t.parse_trigger({"_type": "tag", "patterns": [g("v*")]}), tag_event)


# --- §4.5 paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "files", "expected"),
    [
        ([], None, True),
        (["src/**"], None, False),
        (["src/**"], [], False),
        (["!docs/**"], [], False),
        (["src/**", "!**/*.md"], ["src/app.ts", "README.md"], True),
        (["src/**", "!**/*.md"], ["src/app.md"], False),
        (["!**/*.md"], ["a.md", "b.ts"], True),
        (["!**/*.md"], ["a.md"], False),
        (["!**/*.md", "src/**"], ["src/x.md", "src/y.ts"], True),  # order does not matter
        (["src/**"], ["src/.env"], False),  # dot rule
        (["docs/**"], ["docs"], True),  # x/** matches x
    ],
)
def test_paths(paths: list[str], files: list[str] | None, expected: bool) -> None:
    assert m.trigger_matches(push(paths=paths), ev(target_branch="main", changed_files=files)) is expected


# --- §4.3 pr --------------------------------------------------------------------------------


def pr(**kw: Any) -> t.Trigger:
    return t.parse_trigger({"_type": "pr", **kw})


def test_pr_action_branches_and_source() -> None:
    trig = pr(events=["opened", "synchronize"], targetBranches=[g("main")], sourceBranches=[g("feature/*")])
    base = {"action": "opened", "target_branch": "main", "source_branch": "feature/a"}
    assert m.trigger_matches(trig, ev("pull_request", **base))
    assert not m.trigger_matches(trig, ev("pull_request", **{**base, "action": "closed"}))
    assert not m.trigger_matches(trig, ev("pull_request", **{**base, "action": None}))
    assert not m.trigger_matches(trig, ev("pull_request", **{**base, "source_branch": None}))
    assert not m.trigger_matches(trig, ev("pull_request", **{**base, "target_branch": "dev"}))
    assert not m.trigger_matches(trig, ev("push", target_branch="main"))


# --- §4.6 repos -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repos", "repo", "expected"),
    [
        ([], None, True),
        ([g("myorg/*")], None, False),
        ([g("myorg/*")], "myorg/api", True),
        ([g("myorg/*")], "myorg/.github", False),
        ([g("myorg/*")], "other/api", False),
        ([g("myorg/*"), g("!myorg/archived-*")], "myorg/archived-x", False),
        ([g("!myorg/archived-*")], "other/x", True),
        ([rx("^myorg/"), rx("!legacy$")], "myorg/legacy", False),
        ([g("**")], "a/b", True),
    ],
)
def test_repos(repos: list[dict[str, str]], repo: str | None, expected: bool) -> None:
    trig = push(repos=repos)
    assert m.trigger_matches(trig, ev(target_branch="main", source_repo=repo)) is expected


# --- extended trigger types -----------------------------------------------------------------


def test_dispatch_review_release_star() -> None:
    assert m.trigger_matches(
        t.parse_trigger({"_type": "dispatch", "types": ["release"]}), ev("dispatch", action="release")
    )
    assert not m.trigger_matches(t.parse_trigger({"_type": "dispatch", "types": ["release"]}), ev("dispatch"))
    review = t.parse_trigger({"_type": "review", "actions": ["submitted"], "states": ["approved"]})
    assert m.trigger_matches(review, ev("review", action="submitted", payload={"review": {"state": "approved"}}))
    assert not m.trigger_matches(review, ev("review", action="submitted", payload={"review": {"state": "commented"}}))
    assert m.trigger_matches(t.parse_trigger({"_type": "release", "actions": []}), ev("release", action="published"))
    assert m.trigger_matches(t.parse_trigger({"_type": "star", "actions": ["created"]}), ev("star", action="created"))


def test_comment_source_and_body() -> None:
    trig = t.parse_trigger({"_type": "comment", "actions": ["created"], "source": "pr", "bodyMatch": g("/deploy *")})
    on_pr = {"issue": {"pull_request": None}, "comment": {"body": "/deploy staging"}}
    assert m.trigger_matches(trig, ev("comment", action="created", payload=on_pr))
    assert not m.trigger_matches(trig, ev("comment", action="created", payload={**on_pr, "issue": {}}))
    regex = t.parse_trigger({"_type": "comment", "actions": [], "bodyMatch": rx("^LGTM", "i")})
    assert m.trigger_matches(regex, ev("comment", payload={"comment": {"body": "lgtm!"}}))
    assert not m.trigger_matches(regex, ev("comment", payload={}))


def test_create_delete_status_workflow_run_fork_webhook() -> None:
    create = t.parse_trigger({"_type": "create", "refTypes": ["branch"], "patterns": [g("feature/*")]})
    assert m.trigger_matches(create, ev("create", payload={"ref_type": "branch", "ref": "feature/a"}))
    assert not m.trigger_matches(create, ev("create", payload={"ref_type": "branch"}))
    assert not m.trigger_matches(create, ev("delete", payload={"ref_type": "branch", "ref": "feature/a"}))
    status = t.parse_trigger({"_type": "status", "contexts": ["ci/*"], "states": ["success"]})
    assert m.trigger_matches(status, ev("status", payload={"context": "ci/build", "state": "success"}))
    assert not m.trigger_matches(status, ev("status", payload={"context": "lint", "state": "success"}))
    run = t.parse_trigger(
        {"_type": "workflow_run", "actions": ["completed"], "workflows": ["build"], "conclusions": ["success"]}
    )
    payload = {"workflow_run": {"name": "build", "conclusion": "success"}}
    assert m.trigger_matches(run, ev("workflow_run", action="completed", payload=payload))
    assert m.trigger_matches(t.parse_trigger({"_type": "fork"}), ev("fork"))
    hook = t.parse_trigger({"_type": "webhook", "events": ["deployment", "build"], "actions": []})
    assert m.trigger_matches(hook, ev("build")) and not m.trigger_matches(hook, ev("push"))


def test_schedule_and_internal_events() -> None:
    sched = t.parse_trigger({"_type": "schedule", "cronExpression": "0 3 * * 1", "timezone": "Europe/Berlin"})
    assert m.trigger_matches(sched, ev("schedule", payload={"cronExpression": "0 3 * * 1", "timezone": "UTC"}))
    assert not m.trigger_matches(sched, ev("schedule", payload={"cronExpression": "0 3 * * *"}))
    wc = t.parse_trigger({"_type": "workflow_complete", "name": "ci", "status": ["success"], "source": "a/b"})
    assert m.trigger_matches(
        wc, ev("workflow_complete", payload={"workflowName": "ci", "status": "success", "sourceRepo": "a/b"})
    )
    assert not m.trigger_matches(
        wc, ev("workflow_complete", payload={"workflowName": "ci", "status": "failed", "sourceRepo": "a/b"})
    )
    jc = t.parse_trigger({"_type": "job_complete", "workflow": "ci", "job": "build"})
    assert m.trigger_matches(jc, ev("job_complete", payload={"workflowName": "ci", "jobName": "build"}))
    life = t.parse_trigger({"_type": "lifecycle", "events": ["boot"]})
    assert m.trigger_matches(life, ev("lifecycle", payload={"lifecycleEvent": "boot"}))


def test_kici_event_jsonpath_match_and_not() -> None:
    trig = t.parse_trigger(
        {"_type": "kici_event", "eventName": "deploy-complete", "match": {"$.env": "prod"}, "not": {"$.dry_run": True}}
    )

    def e(data: Any) -> NormalisedEvent:
        return ev("kici_event", payload={"eventName": "deploy-complete", "payload": data})

    assert m.trigger_matches(trig, e({"env": "prod"}))
    assert m.trigger_matches(trig, e({"env": "prod", "dry_run": "true"}))  # no type coercion
    assert not m.trigger_matches(trig, e({"env": "prod", "dry_run": True}))
    assert not m.trigger_matches(trig, e({"env": "dev"}))
    assert not m.trigger_matches(trig, e({}))


def test_jsonpath_expected_forms() -> None:
    def gen(match: dict[str, Any]) -> t.Trigger:
        return t.parse_trigger({"_type": "generic_webhook", "source": "s", "match": match})

    def e(body: dict[str, Any]) -> NormalisedEvent:
        return ev("generic_webhook", payload={"source": "s", **body})

    assert m.trigger_matches(gen({"$.env": ["prod", "staging"]}), e({"env": "staging"}))
    assert m.trigger_matches(gen({"$.ref": "/^v\\d+/"}), e({"ref": "v12"}))
    assert not m.trigger_matches(gen({"$.ref": "/^v\\d+/"}), e({"ref": 12}))
    assert not m.trigger_matches(gen({"$.n": 1}), e({"n": True}))
    assert m.trigger_matches(gen({"$.n": 1}), e({"n": 1.0}))
    assert m.trigger_matches(gen({"$.items[*].id": 2}), e({"items": [{"id": 1}, {"id": 2}]}))
    assert m.trigger_matches(gen({}), e({}))
    assert not m.trigger_matches(gen({}), ev("generic_webhook", payload={"source": "other"}))
    events = t.parse_trigger({"_type": "generic_webhook", "source": "s", "events": ["build"]})
    assert m.trigger_matches(events, ev("generic_webhook", action="build", payload={"source": "s"}))
    assert m.trigger_matches(events, ev("generic_webhook", payload={"source": "s", "eventType": "build"}))


def test_unknown_trigger_never_matches() -> None:
    unknown = t.parse_trigger({"_type": "nope"})
    assert not m.trigger_matches(unknown, ev("nope"))


# --- workflow level and trace ---------------------------------------------------------------


def wf(name: str, *trigs: dict[str, Any]) -> m.WorkflowTriggers:
    return m.WorkflowTriggers(name=name, triggers=tuple(t.parse_trigger(x) for x in trigs))


def test_first_matching_trigger_and_empty_list() -> None:
    trigs = [push(branches=[g("dev")]), push(branches=[g("main")]), push(branches=[])]
    assert m.first_matching_trigger(trigs, ev(target_branch="main")) == 1
    assert m.first_matching_trigger([], ev(target_branch="main")) is None
    assert m.workflow_matches([None, {"_type": "push", "branches": []}], ev(target_branch="x")) == 1
    assert m.matches({"_type": "push", "branches": [g("x")]}, ev(target_branch="x"))


def test_evaluate_reports_each_workflow_and_rejection() -> None:
    workflows = [
        wf("ci", {"_type": "pr", "events": ["opened"]}, {"_type": "push", "branches": [g("main"), g("release/*")]}),
        wf("docs", {"_type": "push", "branches": [], "paths": ["docs/**"]}),
        wf("all", {"_type": "future"}, {"_type": "push"}),
        wf("none"),
    ]
    result = m.evaluate(workflows, ev(target_branch="feature/x", changed_files=["src/a.py"]))
    assert result.matched_names == ("all",)
    ci, docs, all_, none = result.decisions
    assert ci.triggers[0].reason == 'event type: "push" is not "pull_request"'
    assert ci.triggers[1].reason == 'branches: "feature/x" matched none of ["main", "release/*"]'
    assert docs.triggers[0].reason == 'paths: none of 1 changed files matched ["docs/**"]'
    assert all_.matched_trigger == 1 and all_.summary == m.SUMMARY_MATCHED
    assert "unknown trigger type" in (all_.triggers[0].reason or "")
    assert none.matched is False and none.triggers == ()
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["matchedWorkflows"] == ["all"]
    assert ci.summary_dict() == {
        "workflowName": "ci",
        "matched": False,
        "matchedTrigger": None,
        "summary": "No matching trigger",
        "checksCount": 3,
    }


def test_trace_stops_after_first_match_and_untraced_agrees() -> None:
    workflows = [wf("w", {"_type": "push"}, {"_type": "push", "branches": [g("x")]})]
    traced = m.evaluate(workflows, ev(target_branch="x"))
    assert len(traced.decisions[0].triggers) == 1
    index = m.TriggerIndex(workflows)
    plain = index.evaluate(ev(target_branch="x"), trace=False)
    assert plain.matched_names == traced.matched_names and plain.decisions[0].triggers == ()


def test_needs_changed_files() -> None:
    assert m.needs_changed_files([wf("a", {"_type": "pr", "paths": ["!x"]})])
    assert not m.needs_changed_files([wf("a", {"_type": "push"}), wf("b", {"_type": "tag"})])


def test_bench_quick_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "matching.py"
    out = subprocess.run(
        [sys.executable, str(script), "--quick"], capture_output=True, text=True, check=True, timeout=120
    )
    assert "trigger evaluations" in out.stdout and "PR trigger" in out.stdout
