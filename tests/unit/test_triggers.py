"""Trigger model and parse_trigger validation (spec §2.4)."""

from __future__ import annotations

import pytest

from kici_core import triggers as t
from kici_core.errors import LockfileError


def glob(p: str) -> dict[str, str]:
    return {"type": "glob", "pattern": p}


def test_push_trigger_fields_and_defaults() -> None:
    trig = t.parse_trigger({"_type": "push", "branches": [glob("main")], "unknownField": 1})
    assert isinstance(trig, t.PushTrigger)
    assert trig.branches == (t.LockBranchPattern(type="glob", pattern="main"),)
    assert trig.paths == () and trig.repos == ()
    assert not trig.needs_paths
    assert trig.event_types == frozenset({"push"})


def test_pr_trigger_camel_case_fields() -> None:
    trig = t.parse_trigger(
        {
            "_type": "pr",
            "events": ["opened"],
            "targetBranches": [glob("main")],
            "sourceBranches": [{"type": "regex", "pattern": "^feat", "flags": "i"}],
            "paths": ["src/**", "!**/*.md"],
        }
    )
    assert isinstance(trig, t.PrTrigger)
    assert trig.source_branches[0].flags == "i"
    assert trig.needs_paths
    assert trig.event_types == frozenset({"pull_request"})


@pytest.mark.parametrize(
    ("obj", "cls"),
    [
        ({"_type": "tag", "patterns": [glob("v*")]}, t.TagTrigger),
        ({"_type": "dispatch", "types": ["release"], "inputs": {"x": {"type": "string"}}}, t.DispatchTrigger),
        ({"_type": "schedule", "cronExpression": "0 3 * * 1"}, t.ScheduleTrigger),
        ({"_type": "webhook", "events": ["deployment"], "actions": []}, t.WebhookTrigger),
        ({"_type": "generic_webhook", "source": "s", "match": {"$.a": 1}}, t.GenericWebhookTrigger),
        ({"_type": "comment", "actions": ["created"], "source": "pr", "bodyMatch": glob("/deploy*")}, t.CommentTrigger),
        ({"_type": "review", "actions": [], "states": ["approved"]}, t.ReviewTrigger),
        ({"_type": "review_comment", "actions": []}, t.ReviewCommentTrigger),
        ({"_type": "release", "actions": ["published"]}, t.ReleaseTrigger),
        ({"_type": "create", "refTypes": ["tag"], "patterns": []}, t.CreateTrigger),
        ({"_type": "delete", "refTypes": ["branch"], "patterns": []}, t.DeleteTrigger),
        ({"_type": "status", "contexts": ["ci/*"], "states": ["success"]}, t.StatusTrigger),
        ({"_type": "workflow_run", "actions": [], "workflows": ["b"], "conclusions": []}, t.WorkflowRunTrigger),
        ({"_type": "fork"}, t.ForkTrigger),
        ({"_type": "star", "actions": []}, t.StarTrigger),
        ({"_type": "watch", "actions": []}, t.WatchTrigger),
        ({"_type": "kici_event", "eventName": "deploy", "not": {"$.dry": True}}, t.KiciEventTrigger),
        ({"_type": "workflow_complete", "name": "ci", "status": ["success"]}, t.WorkflowCompleteTrigger),
        ({"_type": "job_complete", "workflow": "ci", "job": "build"}, t.JobCompleteTrigger),
        ({"_type": "lifecycle", "events": ["x"]}, t.LifecycleTrigger),
    ],
)
def test_every_trigger_type_parses(obj: dict[str, object], cls: type) -> None:
    trig = t.parse_trigger(obj)
    assert isinstance(trig, cls)
    assert not trig.needs_paths


def test_schedule_defaults_timezone() -> None:
    trig = t.parse_trigger({"_type": "schedule", "cronExpression": "* * * * *"})
    assert isinstance(trig, t.ScheduleTrigger) and trig.timezone == "UTC"


def test_unknown_type_and_null_never_crash() -> None:
    unknown = t.parse_trigger({"_type": "future_thing", "x": 1})
    assert isinstance(unknown, t.UnknownTrigger) and unknown.type_name == "future_thing"
    assert unknown.event_types == frozenset()
    assert isinstance(t.parse_trigger(None), t.UnknownTrigger)


@pytest.mark.parametrize(
    ("obj", "path", "reason"),
    [
        (
            {"_type": "pr", "targetBranches": [glob("a"), {"type": "regex", "pattern": "(["}]},
            "workflows[0].triggers[2].targetBranches[1]",
            "invalid regex",
        ),
        (
            {"_type": "push", "branches": [{"type": "literal", "pattern": "x"}]},
            "workflows[0].triggers[2].branches[0].type",
            "glob",
        ),
        ({"_type": "push", "branches": ["main"]}, "workflows[0].triggers[2].branches[0]", "pattern object"),
        ({"_type": "push", "branches": "main"}, "workflows[0].triggers[2].branches", "array"),
        ({"_type": "push", "paths": [3]}, "workflows[0].triggers[2].paths[0]", "string"),
        ({"_type": "push", "paths": ["{1..99999}"]}, "workflows[0].triggers[2].paths[0]", "invalid glob"),
        ({"_type": "schedule"}, "workflows[0].triggers[2].cronExpression", "required"),
        (
            {"_type": "tag", "patterns": [{"type": "regex", "pattern": "a", "flags": "z"}]},
            "workflows[0].triggers[2].patterns[0]",
            "flag",
        ),
        ({"_type": "comment", "source": "mr"}, "workflows[0].triggers[2].source", "issue"),
        (
            {"_type": "kici_event", "eventName": "e", "match": {"$[?(@)]": 1}},
            "workflows[0].triggers[2].match['$[?(@)]']",
            "unsupported JSONPath",
        ),
        (
            {"_type": "kici_event", "eventName": "e", "match": {"$.a": "/(/"}},
            "workflows[0].triggers[2].match['$.a']",
            "invalid regex",
        ),
        ({"branches": []}, "workflows[0].triggers[2]._type", "string"),
    ],
)
def test_errors_name_the_json_path(obj: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(LockfileError) as info:
        t.parse_trigger(obj, path="workflows[0].triggers[2]")
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith(path + ": ")


def test_not_an_object() -> None:
    with pytest.raises(LockfileError, match=r"^trigger: expected a trigger object"):
        t.parse_trigger(["push"])  # type: ignore[arg-type]


def test_triggers_are_frozen_and_comparable() -> None:
    a = t.parse_trigger({"_type": "tag", "patterns": [glob("v*")]})
    b = t.parse_trigger({"_type": "tag", "patterns": [glob("v*")]})
    assert a == b
    assert isinstance(a, t.TagTrigger)
    with pytest.raises(AttributeError):
        a.patterns = ()  # type: ignore[misc]
