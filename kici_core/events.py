"""Normalised events: what trigger matching sees, built from provider deliveries.

:class:`NormalisedEvent` is provider-neutral. :func:`normalize_github` maps a GitHub delivery
(``X-GitHub-Event`` + JSON payload) to one, or to ``None`` for event types KiCI ignores.
:func:`lockfile_ref` says at which ref to read ``.kici/kici.lock.json``; :func:`commit_ref` names the commit jobs
check out (for a pull request always the head, whichever lock file the trust rule chose). Generic sources are
normalised by :func:`parse_generic_body`, :func:`generic_event_type` and
:func:`normalize_generic`.

Changed files are never part of a provider delivery; the pipeline fetches them (see
:func:`changed_files_request`) and attaches them with :meth:`NormalisedEvent.with_changed_files`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from kici_core import jsonpath, jsontypes, webhooks
from kici_core.jsontypes import JSONValue

__all__ = [
    "GENERIC_TARGET_BRANCH",
    "ZERO_SHA",
    "ChangedFilesRequest",
    "NormalisedEvent",
    "changed_files_request",
    "commit_ref",
    "generic_event_type",
    "internal_event",
    "job_ref",
    "lockfile_ref",
    "normalize_generic",
    "normalize_github",
    "parse_generic_body",
    "repo_full_name",
]

ZERO_SHA = "0" * 40
GENERIC_TARGET_BRANCH = "__generic__"
_PR_FAMILY = frozenset(("pull_request", "pull_request_review", "pull_request_review_comment"))


@dataclass(frozen=True, slots=True, kw_only=True)
class NormalisedEvent:
    """One provider delivery in the shape trigger matching works on.

    Attributes:
        type: KiCI event type (``push``, ``tag``, ``pull_request``, ``comment``, ...); not the
            provider's header value.
        action: sub-action (``payload.action``; the ``event_type`` for dispatch), or None.
        target_branch: branch (push), tag name (tag), PR base branch (PR family), ...
        source_branch: PR head branch for the PR family, else None.
        base_branch: PR base branch (same as ``target_branch`` for the PR family).
        is_fork_pr: PR family only: head and base repositories differ.
        sender_username / sender_user_id: ``sender.login`` / ``str(sender.id)``.
        changed_files: repo-relative paths; None and ``()`` behave the same.
        source_repo: ``owner/repo`` where the event happened (repo filters read it).
        payload: the raw provider payload (or internal envelope).
    """

    type: str
    action: str | None = None
    target_branch: str = ""
    source_branch: str | None = None
    base_branch: str | None = None
    is_fork_pr: bool | None = None
    sender_username: str | None = None
    sender_user_id: str | None = None
    changed_files: tuple[str, ...] | None = None
    source_repo: str | None = None
    payload: Mapping[str, JSONValue] = field(default_factory=dict, compare=False)

    def with_changed_files(self, files: Sequence[str] | None) -> NormalisedEvent:
        """A copy carrying ``files`` as its changed files."""
        return replace(self, changed_files=None if files is None else tuple(files))

    def to_wire(self, provider: str) -> dict[str, JSONValue]:
        """The event as agents receive it in ``jobConfig.event``: the camelCase names of upstream's normalised
        event (``type``, ``action``, ``targetBranch``, ``sourceBranch``, ``baseBranch``, ``isForkPR``,
        ``senderUsername``, ``senderUserId``, ``changedFiles``, ``sourceRepo``, ``payload``) plus ``provider``.
        Fields without a value are left out, as upstream's JSON leaves out undefined fields."""
        fields: dict[str, JSONValue] = {
            "type": self.type,
            "action": self.action,
            "targetBranch": self.target_branch,
            "sourceBranch": self.source_branch,
            "baseBranch": self.base_branch,
            "isForkPR": self.is_fork_pr,
            "senderUsername": self.sender_username,
            "senderUserId": self.sender_user_id,
            "changedFiles": None if self.changed_files is None else list(self.changed_files),
            "sourceRepo": self.source_repo,
            "provider": provider,
        }
        wire: dict[str, JSONValue] = {k: v for k, v in fields.items() if v is not None}
        wire["payload"] = dict(self.payload)
        return wire

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe snake_case form (the conformance shape of spec §3.1)."""
        return {
            "type": self.type,
            "action": self.action,
            "target_branch": self.target_branch,
            "source_branch": self.source_branch,
            "base_branch": self.base_branch,
            "is_fork_pr": self.is_fork_pr,
            "sender_username": self.sender_username,
            "sender_user_id": self.sender_user_id,
            "changed_files": None if self.changed_files is None else list(self.changed_files),
            "source_repo": self.source_repo,
            "payload": self.payload,
        }


# ---------------------------------------------------------------------------------------------
# Small JSON readers
# ---------------------------------------------------------------------------------------------


def _str(obj: object, *keys: str) -> str | None:
    value = jsonpath.get_in(obj, keys)
    return value if isinstance(value, str) else None


def _default_branch(payload: Mapping[str, object]) -> str:
    return _str(payload, "repository", "default_branch") or "main"


def repo_full_name(payload: Mapping[str, object]) -> str | None:
    """``repository.full_name``, else ``repository.owner.login + "/" + repository.name``, else None."""
    full = _str(payload, "repository", "full_name")
    if full:
        return full
    owner = _str(payload, "repository", "owner", "login")
    name = _str(payload, "repository", "name")
    if owner and name:
        return f"{owner}/{name}"
    return None


def _sender(payload: Mapping[str, object]) -> tuple[str | None, str | None]:
    login = _str(payload, "sender", "login")
    ident = jsonpath.get_in(payload, ("sender", "id"))
    if isinstance(ident, bool):
        ident = None
    user_id = str(ident) if isinstance(ident, int | str) else None
    return login, user_id


def _is_fork(payload: Mapping[str, object]) -> bool:
    head = _str(payload, "pull_request", "head", "repo", "full_name")
    base = _str(payload, "pull_request", "base", "repo", "full_name")
    return bool(head and base and head != base)


# ---------------------------------------------------------------------------------------------
# GitHub
# ---------------------------------------------------------------------------------------------

# X-GitHub-Event -> (KiCI type, whether the action is kept)
_SIMPLE: dict[str, tuple[str, bool]] = {
    "issue_comment": ("comment", True),
    "repository_dispatch": ("dispatch", True),
    "release": ("release", True),
    "create": ("create", False),
    "delete": ("delete", False),
    "status": ("status", False),
    "workflow_run": ("workflow_run", True),
    "fork": ("fork", False),
    "star": ("star", True),
    "watch": ("watch", True),
}


def normalize_github(event_name: str, payload: Mapping[str, JSONValue]) -> NormalisedEvent | None:
    """Normalise a GitHub delivery (spec §3.2); ``None`` when KiCI ignores it.

    Dropped: event types outside the table (``ping``, ``issues``, ...), a push without ``ref``
    and a ``pull_request`` without ``pull_request.base.ref``. The action always comes from the
    top-level ``payload.action`` when it is a string. ``source_repo`` is filled from the payload.
    """
    raw_action = payload.get("action")
    action = raw_action if isinstance(raw_action, str) else None
    login, user_id = _sender(payload)
    common: dict[str, object] = {
        "sender_username": login,
        "sender_user_id": user_id,
        "source_repo": repo_full_name(payload),
        "payload": payload,
    }
    if event_name == "push":
        ref = payload.get("ref")
        if not isinstance(ref, str):
            return None
        if ref.startswith("refs/tags/"):
            return NormalisedEvent(type="tag", target_branch=ref[len("refs/tags/") :], **common)  # type: ignore[arg-type]
        if ref.startswith("refs/heads/"):
            ref = ref[len("refs/heads/") :]
        return NormalisedEvent(type="push", target_branch=ref, **common)  # type: ignore[arg-type]
    if event_name in _PR_FAMILY:
        base = _str(payload, "pull_request", "base", "ref")
        if event_name == "pull_request":
            if base is None:
                return None
            kind = "pull_request"
        else:
            kind = "review" if event_name == "pull_request_review" else "review_comment"
            base = base if base is not None else _default_branch(payload)
        return NormalisedEvent(
            type=kind,
            action=action,
            target_branch=base,
            source_branch=_str(payload, "pull_request", "head", "ref"),
            base_branch=base,
            is_fork_pr=_is_fork(payload),
            **common,  # type: ignore[arg-type]
        )
    simple = _SIMPLE.get(event_name)
    if simple is None:
        return None
    kind, keeps_action = simple
    if event_name == "release":
        target = _str(payload, "release", "target_commitish")
    elif event_name in ("create", "delete"):
        target = _str(payload, "ref")
    elif event_name == "status":
        target = _str(_first(payload.get("branches")), "name")
    elif event_name == "workflow_run":
        target = _str(payload, "workflow_run", "head_branch")
    else:
        target = None
    return NormalisedEvent(
        type=kind,
        action=action if keeps_action else None,
        target_branch=target or _default_branch(payload),
        **common,  # type: ignore[arg-type]
    )


def _first(value: object) -> object:
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        return value[0]
    return None


def commit_ref(event_name: str, payload: Mapping[str, JSONValue]) -> str:
    """The commit a GitHub delivery is about (spec §3.3, upstream's ``extractRef``): the pushed ``after``, the
    pull request's head SHA (PR, review, review comment), the status's ``sha``, the release's target; else
    ``"HEAD"``. Jobs are dispatched with it as ``sha``; it is the ``ref`` of the delivery's event log entry."""
    if event_name == "push":
        return _str(payload, "after") or "HEAD"
    if event_name in _PR_FAMILY:
        return _str(payload, "pull_request", "head", "sha") or "HEAD"
    if event_name == "status":
        return _str(payload, "sha") or "HEAD"
    if event_name == "release":
        return _str(payload, "release", "target_commitish") or "HEAD"
    return "HEAD"


def lockfile_ref(event_name: str, payload: Mapping[str, JSONValue], *, trusted: bool = False) -> str:
    """The ref at which to read the lock file for this GitHub delivery (spec §3.3).

    PR-family events use the PR base branch name (safe default) unless ``trusted`` (the sender
    resolved to the trusted tier), in which case the PR head SHA (or ``"HEAD"``) is used. Every
    other event reads it at :func:`commit_ref`. Only the lock file moves: jobs still check out
    :func:`commit_ref`.
    """
    if event_name in _PR_FAMILY and not trusted:
        return _str(payload, "pull_request", "base", "ref") or _default_branch(payload)
    return commit_ref(event_name, payload)


def job_ref(event: NormalisedEvent) -> str:
    """The ref jobs are dispatched with: the PR head branch, else the target branch."""
    return event.source_branch or event.target_branch


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangedFilesRequest:
    """What the pipeline must fetch to learn the changed files (spec §3.4).

    ``kind == "pull_request"``: list the files of PR ``number``. ``kind == "compare"``: compare
    ``base...head``.
    """

    kind: Literal["pull_request", "compare"]
    number: int | None = None
    base: str | None = None
    head: str | None = None


def changed_files_request(event_name: str, payload: Mapping[str, JSONValue]) -> ChangedFilesRequest | None:
    """How to fetch the changed files of a GitHub delivery, or None when the list is ``[]``.

    Only raw ``pull_request`` events use the PR file list; a push compares ``before...after``
    unless either is missing or all zeros (new branch, deletion). Tag pushes behave like pushes.
    """
    if event_name == "pull_request":
        number = jsonpath.get_in(payload, ("pull_request", "number"))
        if not isinstance(number, int) or isinstance(number, bool):
            number = payload.get("number")
        if isinstance(number, int) and not isinstance(number, bool):
            return ChangedFilesRequest(kind="pull_request", number=number)
        return None
    if event_name == "push":
        before, after = _str(payload, "before"), _str(payload, "after")
        if not before or not after or before == ZERO_SHA or after == ZERO_SHA:
            return None
        return ChangedFilesRequest(kind="compare", base=before, head=after)
    return None


# ---------------------------------------------------------------------------------------------
# Generic sources and internal events
# ---------------------------------------------------------------------------------------------


def parse_generic_body(raw: bytes, content_type: str | None) -> dict[str, JSONValue]:
    """Parse a generic-source body: JSON object, JSON scalar -> ``{"value": v}``, form fields
    (last duplicate wins), else ``{"body": raw}``; empty or whitespace -> ``{}``.

    Raises:
        JSONTooDeep: a JSON body nested deeper than :data:`~kici_core.jsontypes.MAX_DEPTH`.
    """
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return {}
    ctype = (content_type or "").lower()
    if not ctype or "application/json" in ctype:
        try:
            value = jsontypes.loads(text)
        except jsontypes.JSONTooDeep:
            raise
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
            if not isinstance(value, list):
                return {"value": value}
            # A JSON array is neither an object nor a scalar: keep it as the raw body.
    if "application/x-www-form-urlencoded" in ctype:
        return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
    return {"body": text}


def generic_event_type(
    body: Mapping[str, JSONValue],
    headers: Mapping[str, str],
    *,
    event_type_header: str | None = None,
    event_type_path: str | None = None,
) -> str:
    """The event name of a generic delivery: the configured header, then the configured dot path
    in the body (leading ``$``/``$.`` stripped, string values only), then ``X-Event-Type``,
    else ``"default"``."""
    lowered = webhooks.lower_headers(headers)
    if event_type_header:
        value = lowered.get(event_type_header.lower())
        if value:
            return value
    if event_type_path:
        value = jsonpath.dot_path(body, event_type_path)
        if value is not None:
            return value
    return lowered.get("x-event-type") or "default"


def normalize_generic(
    body: Mapping[str, JSONValue], event_type: str, *, source_repo: str | None = None
) -> NormalisedEvent:
    """Normalised event for a generic-source delivery (``type = "generic_webhook"``).

    ``action`` is ``event_type`` unless it is ``"default"``; ``payload`` is the parsed body.
    """
    return NormalisedEvent(
        type="generic_webhook",
        action=None if event_type == "default" else event_type,
        target_branch=GENERIC_TARGET_BRANCH,
        source_repo=source_repo,
        payload=body,
    )


def internal_event(
    kind: Literal["schedule", "kici_event", "workflow_complete", "job_complete", "lifecycle"],
    payload: Mapping[str, JSONValue],
    *,
    source_repo: str | None = None,
) -> NormalisedEvent:
    """Normalised event for an orchestrator-internal source (schedules, custom and system
    events); ``target_branch`` is ``"main"`` as upstream sets it."""
    return NormalisedEvent(type=kind, target_branch="main", source_repo=source_repo, payload=payload)
