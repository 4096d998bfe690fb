"""GitHub and generic normalisation, lock-file refs (spec §3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kici_core import events as ev

FIXTURES = Path(__file__).parent.parent / "fixtures" / "github"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def test_branch_push() -> None:
    e = ev.normalize_github("push", load("push_branch"))
    assert e is not None
    assert (e.type, e.target_branch, e.action) == ("push", "main", None)
    assert e.source_repo == "acme/api"
    assert (e.sender_username, e.sender_user_id) == ("alice", "101")
    assert e.changed_files is None and e.is_fork_pr is None


def test_tag_push_is_type_tag() -> None:
    e = ev.normalize_github("push", load("push_tag"))
    assert e is not None and (e.type, e.target_branch) == ("tag", "v1.2.3")
    assert e.source_repo == "acme/api"  # owner.login + name fallback


def test_other_refs_and_missing_ref() -> None:
    e = ev.normalize_github("push", {"ref": "refs/notes/x"})
    assert e is not None and (e.type, e.target_branch) == ("push", "refs/notes/x")
    assert ev.normalize_github("push", {"ref": "refs/tags/rel/1"}).target_branch == "rel/1"  # type: ignore[union-attr]
    assert ev.normalize_github("push", {}) is None


def test_pull_request() -> None:
    e = ev.normalize_github("pull_request", load("pull_request_opened"))
    assert e is not None
    assert e.type == "pull_request" and e.action == "opened"
    assert (e.target_branch, e.base_branch, e.source_branch) == ("main", "main", "feature/login")
    assert e.is_fork_pr is True
    assert ev.normalize_github("pull_request", {"action": "opened", "pull_request": {"head": {"ref": "x"}}}) is None


def test_pr_action_comes_from_top_level_action() -> None:
    payload = load("pull_request_opened")
    payload["pull_request"]["action"] = "closed"
    e = ev.normalize_github("pull_request", payload)
    assert e is not None and e.action == "opened"


def test_review_falls_back_to_default_branch() -> None:
    e = ev.normalize_github("pull_request_review", load("pull_request_review"))
    assert e is not None and (e.type, e.action, e.target_branch, e.is_fork_pr) == ("review", "submitted", "main", False)
    e2 = ev.normalize_github(
        "pull_request_review_comment", {"action": "created", "repository": {"default_branch": "dev"}}
    )
    assert e2 is not None and (e2.type, e2.target_branch, e2.source_branch) == ("review_comment", "dev", None)


@pytest.mark.parametrize(
    ("name", "payload", "etype", "action", "target"),
    [
        (
            "issue_comment",
            {"action": "created", "repository": {"default_branch": "trunk"}},
            "comment",
            "created",
            "trunk",
        ),
        ("repository_dispatch", {"action": "deploy"}, "dispatch", "deploy", "main"),
        ("release", {"action": "published", "release": {"target_commitish": "rel"}}, "release", "published", "rel"),
        ("create", {"ref": "feature/a", "ref_type": "branch", "action": "x"}, "create", None, "feature/a"),
        ("delete", {"ref_type": "tag"}, "delete", None, "main"),
        ("status", {"branches": [{"name": "dev"}], "state": "success"}, "status", None, "dev"),
        (
            "workflow_run",
            {"action": "completed", "workflow_run": {"head_branch": "x"}},
            "workflow_run",
            "completed",
            "x",
        ),
        ("fork", {}, "fork", None, "main"),
        ("star", {"action": "created"}, "star", "created", "main"),
        ("watch", {"action": "started"}, "watch", "started", "main"),
    ],
)
def test_extended_rows(name: str, payload: dict[str, Any], etype: str, action: str | None, target: str) -> None:
    e = ev.normalize_github(name, payload)
    assert e is not None and (e.type, e.action, e.target_branch) == (etype, action, target)
    assert e.payload is payload


@pytest.mark.parametrize("name", ["ping", "issues", "deployment", "membership", "check_run"])
def test_other_events_are_dropped(name: str) -> None:
    assert ev.normalize_github(name, {"action": "created"}) is None


def test_lockfile_refs() -> None:
    assert ev.lockfile_ref("push", load("push_branch")) == "2" * 40
    assert ev.lockfile_ref("push", {}) == "HEAD"
    pr = load("pull_request_opened")
    assert ev.lockfile_ref("pull_request", pr) == "main"
    assert ev.lockfile_ref("pull_request", pr, trusted=True) == "b" * 40
    assert ev.lockfile_ref("pull_request_review", {"pull_request": {}}, trusted=True) == "HEAD"
    assert ev.lockfile_ref("status", {"sha": "abc"}) == "abc"
    assert ev.lockfile_ref("release", {"release": {"target_commitish": "v2"}}) == "v2"
    assert ev.lockfile_ref("issue_comment", {}) == "HEAD"


def test_commit_ref_is_the_head_whatever_lock_file_is_read() -> None:
    pr = load("pull_request_opened")
    assert ev.commit_ref("pull_request", pr) == "b" * 40  # the lock file is read at "main" (untrusted)
    assert ev.commit_ref("pull_request_review", pr) == "b" * 40
    assert ev.commit_ref("pull_request", {"pull_request": {"base": {"ref": "main"}}}) == "HEAD"
    assert ev.commit_ref("push", load("push_branch")) == "2" * 40
    assert ev.commit_ref("status", {"sha": "abc"}) == "abc"
    assert ev.commit_ref("release", {"release": {"target_commitish": "v2"}}) == "v2"
    assert ev.commit_ref("issue_comment", {}) == "HEAD"
    for name in ("push", "status", "release", "issue_comment"):  # outside pull requests both refs agree
        assert ev.commit_ref(name, load("push_branch")) == ev.lockfile_ref(name, load("push_branch"))


def test_wire_form_uses_upstream_names_and_keeps_the_payload() -> None:
    pr = load("pull_request_opened")
    e = ev.normalize_github("pull_request", pr)
    assert e is not None
    assert e.with_changed_files(["src/a.py"]).to_wire("github") == {
        "type": "pull_request",
        "action": "opened",
        "targetBranch": "main",
        "sourceBranch": "feature/login",
        "baseBranch": "main",
        "isForkPR": True,
        "senderUsername": "mallory",
        "senderUserId": "666",
        "changedFiles": ["src/a.py"],
        "sourceRepo": "acme/api",
        "provider": "github",
        "payload": pr,
    }
    push = ev.normalize_github("push", load("push_branch"))
    assert push is not None
    wire = push.to_wire("github")
    assert wire == {
        "type": "push",
        "targetBranch": "main",
        "senderUsername": "alice",
        "senderUserId": "101",
        "sourceRepo": "acme/api",
        "provider": "github",
        "payload": load("push_branch"),
    }
    assert json.loads(json.dumps(wire)) == wire  # plain JSON, no absent field written as null


def test_repo_full_name() -> None:
    assert ev.repo_full_name({"repository": {"full_name": "a/b"}}) == "a/b"
    assert ev.repo_full_name({"repository": {"name": "b", "owner": {"login": "a"}}}) == "a/b"
    assert ev.repo_full_name({}) is None


def test_changed_files_request() -> None:
    assert ev.changed_files_request("pull_request", load("pull_request_opened")) == ev.ChangedFilesRequest(
        kind="pull_request", number=42
    )
    push = load("push_branch")
    assert ev.changed_files_request("push", push) == ev.ChangedFilesRequest(
        kind="compare", base="1" * 40, head="2" * 40
    )
    assert ev.changed_files_request("push", load("push_tag")) is None  # new ref: before is zeros
    assert ev.changed_files_request("push", {**push, "after": ev.ZERO_SHA}) is None
    assert ev.changed_files_request("pull_request_review", load("pull_request_review")) is None


def test_changed_files_attach_and_serialise() -> None:
    e = ev.normalize_github("pull_request", load("pull_request_opened"))
    assert e is not None
    e2 = e.with_changed_files(["src/a.ts"])
    assert e2.changed_files == ("src/a.ts",) and e.changed_files is None
    d = e2.to_dict()
    assert d["changed_files"] == ["src/a.ts"] and d["is_fork_pr"] is True
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize(
    ("raw", "ctype", "expected"),
    [
        (b"", None, {}),
        (b"  ", "application/json", {}),
        (b'{"a": 1}', None, {"a": 1}),
        (b"42", "application/json; charset=utf-8", {"value": 42}),
        (b"a=1&b=2&a=3", "application/x-www-form-urlencoded", {"a": "3", "b": "2"}),
        (b"{bad", "application/json", {"body": "{bad"}),
        (b"hello", "text/plain", {"body": "hello"}),
    ],
)
def test_parse_generic_body(raw: bytes, ctype: str | None, expected: dict[str, Any]) -> None:
    assert ev.parse_generic_body(raw, ctype) == expected


def test_generic_event_type_precedence() -> None:
    body = {"meta": {"kind": "build"}}
    headers = {"X-Custom": "from-header", "X-Event-Type": "fallback"}
    assert (
        ev.generic_event_type(body, headers, event_type_header="x-custom", event_type_path="$.meta.kind")
        == "from-header"
    )
    assert ev.generic_event_type(body, headers, event_type_path="$.meta.kind") == "build"
    assert ev.generic_event_type(body, headers, event_type_path="meta.missing") == "fallback"
    assert ev.generic_event_type(body, {}) == "default"


def test_normalize_generic() -> None:
    e = ev.normalize_generic({"x": 1}, "default")
    assert (e.type, e.action, e.target_branch) == ("generic_webhook", None, "__generic__")
    assert ev.normalize_generic({}, "build").action == "build"
    assert ev.internal_event("kici_event", {"eventName": "x"}).target_branch == "main"
