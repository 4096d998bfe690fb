"""Trigger model of the lock file (schema 29, ``workflows[].triggers[]``) and its parser.

Every trigger type of the lock file has a frozen dataclass here; :data:`Trigger` is their union.
:func:`parse_trigger` validates one trigger object and raises :class:`LockfileError` naming the
JSON path of the offending value. Every glob, regex and JSONPath is compiled while parsing, so a
lock file that parses can always be matched. Unknown ``_type`` values (and ``null`` entries)
parse to :class:`UnknownTrigger`, which never matches.

Conventions: a missing list field is ``()`` (an empty list means "no filter"); lists are tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from kici_core.errors import LockfileError
from kici_core.jsontypes import JSONValue
from kici_core.lockfile_values import kind_of
from kici_core.trigger_fields import FieldReader, JsonCondition, LockBranchPattern, parse_branch_pattern

__all__ = [
    "CommentTrigger",
    "CreateTrigger",
    "DeleteTrigger",
    "DispatchTrigger",
    "ForkTrigger",
    "GenericWebhookTrigger",
    "JobCompleteTrigger",
    "JsonCondition",
    "KiciEventTrigger",
    "LifecycleTrigger",
    "LockBranchPattern",
    "PrTrigger",
    "PushTrigger",
    "ReleaseTrigger",
    "ReviewCommentTrigger",
    "ReviewTrigger",
    "ScheduleTrigger",
    "StarTrigger",
    "StatusTrigger",
    "TagTrigger",
    "Trigger",
    "UnknownTrigger",
    "WatchTrigger",
    "WebhookTrigger",
    "WorkflowCompleteTrigger",
    "WorkflowRunTrigger",
    "parse_branch_pattern",
    "parse_trigger",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    # Compiled matcher, filled lazily by kici_core.matching; not part of equality.
    _compiled: object = field(default=None, init=False, repr=False, compare=False)

    kind: ClassVar[str] = ""

    @property
    def event_types(self) -> frozenset[str]:
        """Normalised event types this trigger can ever match (used to index triggers)."""
        return frozenset((self.kind,))

    @property
    def needs_paths(self) -> bool:
        """True when a path filter must be evaluated (the pipeline then fetches changed files)."""
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class PushTrigger(_Base):
    """``_type: "push"``: branch pushes (never tag pushes)."""

    kind: ClassVar[str] = "push"
    branches: tuple[LockBranchPattern, ...] = ()
    paths: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()

    @property
    def needs_paths(self) -> bool:
        return bool(self.paths)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrTrigger(_Base):
    """``_type: "pr"``: pull request events."""

    kind: ClassVar[str] = "pr"
    events: tuple[str, ...] = ()
    target_branches: tuple[LockBranchPattern, ...] = ()
    source_branches: tuple[LockBranchPattern, ...] = ()
    paths: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(("pull_request",))

    @property
    def needs_paths(self) -> bool:
        return bool(self.paths)


@dataclass(frozen=True, slots=True, kw_only=True)
class TagTrigger(_Base):
    """``_type: "tag"``: tag pushes."""

    kind: ClassVar[str] = "tag"
    patterns: tuple[LockBranchPattern, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchTrigger(_Base):
    """``_type: "dispatch"``: ``repository_dispatch`` and manual runs."""

    kind: ClassVar[str] = "dispatch"
    types: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()
    inputs: Mapping[str, JSONValue] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleTrigger(_Base):
    """``_type: "schedule"``: cron schedules (matched on the exact expression)."""

    kind: ClassVar[str] = "schedule"
    cron_expression: str
    timezone: str = "UTC"
    description: str | None = None
    inputs: Mapping[str, JSONValue] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookTrigger(_Base):
    """``_type: "webhook"``: matches any event type listed in ``events``."""

    kind: ClassVar[str] = "webhook"
    events: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self.events)


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericWebhookTrigger(_Base):
    """``_type: "generic_webhook"``."""

    kind: ClassVar[str] = "generic_webhook"
    source: str
    events: tuple[str, ...] = ()
    match: tuple[JsonCondition, ...] = ()
    not_: tuple[JsonCondition, ...] = ()
    auth: Mapping[str, JSONValue] | None = field(default=None, compare=False)
    path: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommentTrigger(_Base):
    """``_type: "comment"``: ``issue_comment`` deliveries."""

    kind: ClassVar[str] = "comment"
    actions: tuple[str, ...] = ()
    source: Literal["issue", "pr"] | None = None
    body_match: LockBranchPattern | None = None
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewTrigger(_Base):
    """``_type: "review"``: ``pull_request_review`` deliveries."""

    kind: ClassVar[str] = "review"
    actions: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewCommentTrigger(_Base):
    """``_type: "review_comment"``."""

    kind: ClassVar[str] = "review_comment"
    actions: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseTrigger(_Base):
    """``_type: "release"``."""

    kind: ClassVar[str] = "release"
    actions: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateTrigger(_Base):
    """``_type: "create"``: branch or tag creation."""

    kind: ClassVar[str] = "create"
    ref_types: tuple[str, ...] = ()
    patterns: tuple[LockBranchPattern, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteTrigger(_Base):
    """``_type: "delete"``: branch or tag deletion."""

    kind: ClassVar[str] = "delete"
    ref_types: tuple[str, ...] = ()
    patterns: tuple[LockBranchPattern, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusTrigger(_Base):
    """``_type: "status"``: commit statuses; ``contexts`` are globs."""

    kind: ClassVar[str] = "status"
    contexts: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRunTrigger(_Base):
    """``_type: "workflow_run"``."""

    kind: ClassVar[str] = "workflow_run"
    actions: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()
    conclusions: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkTrigger(_Base):
    """``_type: "fork"``."""

    kind: ClassVar[str] = "fork"
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StarTrigger(_Base):
    """``_type: "star"``."""

    kind: ClassVar[str] = "star"
    actions: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchTrigger(_Base):
    """``_type: "watch"``."""

    kind: ClassVar[str] = "watch"
    actions: tuple[str, ...] = ()
    repos: tuple[LockBranchPattern, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class KiciEventTrigger(_Base):
    """``_type: "kici_event"``: custom events emitted by workflows."""

    kind: ClassVar[str] = "kici_event"
    event_name: str
    match: tuple[JsonCondition, ...] = ()
    not_: tuple[JsonCondition, ...] = ()
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowCompleteTrigger(_Base):
    """``_type: "workflow_complete"``."""

    kind: ClassVar[str] = "workflow_complete"
    name: str | None = None
    status: tuple[str, ...] = ()
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCompleteTrigger(_Base):
    """``_type: "job_complete"``."""

    kind: ClassVar[str] = "job_complete"
    workflow: str | None = None
    job: str | None = None
    status: tuple[str, ...] = ()
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleTrigger(_Base):
    """``_type: "lifecycle"`` (nothing emits lifecycle events upstream; kept for parity)."""

    kind: ClassVar[str] = "lifecycle"
    events: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownTrigger(_Base):
    """A trigger whose ``_type`` this version does not know (or a ``null`` entry). Never matches."""

    kind: ClassVar[str] = "unknown"
    type_name: str | None

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset()


Trigger: TypeAlias = (
    PushTrigger
    | PrTrigger
    | TagTrigger
    | DispatchTrigger
    | ScheduleTrigger
    | WebhookTrigger
    | GenericWebhookTrigger
    | CommentTrigger
    | ReviewTrigger
    | ReviewCommentTrigger
    | ReleaseTrigger
    | CreateTrigger
    | DeleteTrigger
    | StatusTrigger
    | WorkflowRunTrigger
    | ForkTrigger
    | StarTrigger
    | WatchTrigger
    | KiciEventTrigger
    | WorkflowCompleteTrigger
    | JobCompleteTrigger
    | LifecycleTrigger
    | UnknownTrigger
)

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _parse_known(kind: str, r: FieldReader) -> Trigger | None:
    repos = r.patterns("repos")
    if kind == "push":
        return PushTrigger(
            branches=r.patterns("branches"), paths=r.globs_list("paths", allow_negation=True), repos=repos
        )
    if kind == "pr":
        return PrTrigger(
            events=r.strings("events"),
            target_branches=r.patterns("targetBranches"),
            source_branches=r.patterns("sourceBranches"),
            paths=r.globs_list("paths", allow_negation=True),
            repos=repos,
        )
    if kind == "tag":
        return TagTrigger(patterns=r.patterns("patterns"), repos=repos)
    if kind == "dispatch":
        return DispatchTrigger(types=r.strings("types"), repos=repos, inputs=r.mapping_opt("inputs"))
    if kind == "schedule":
        return ScheduleTrigger(
            cron_expression=r.str_req("cronExpression"),
            timezone=r.str_opt("timezone") or "UTC",
            description=r.str_opt("description"),
            inputs=r.mapping_opt("inputs"),
        )
    if kind == "webhook":
        return WebhookTrigger(events=r.strings("events"), actions=r.strings("actions"), repos=repos)
    if kind == "generic_webhook":
        return GenericWebhookTrigger(
            source=r.str_req("source"),
            events=r.strings("events"),
            match=r.conditions("match"),
            not_=r.conditions("not"),
            auth=r.mapping_opt("auth"),
            path=r.str_opt("path"),
        )
    if kind == "comment":
        source = r.str_opt("source")
        if source not in (None, "issue", "pr"):
            raise LockfileError(r.at("source"), f'expected "issue" or "pr", got {source!r}')
        body = r.obj.get("bodyMatch")
        body_match = None if body is None else parse_branch_pattern(body, r.at("bodyMatch"))
        return CommentTrigger(
            actions=r.strings("actions"),
            source=source,  # type: ignore[arg-type]
            body_match=body_match,
            repos=repos,
        )
    if kind == "review":
        return ReviewTrigger(actions=r.strings("actions"), states=r.strings("states"), repos=repos)
    if kind == "review_comment":
        return ReviewCommentTrigger(actions=r.strings("actions"), repos=repos)
    if kind == "release":
        return ReleaseTrigger(actions=r.strings("actions"), repos=repos)
    if kind in ("create", "delete"):
        cls = CreateTrigger if kind == "create" else DeleteTrigger
        return cls(ref_types=r.strings("refTypes"), patterns=r.patterns("patterns"), repos=repos)
    if kind == "status":
        return StatusTrigger(
            contexts=r.globs_list("contexts", allow_negation=True), states=r.strings("states"), repos=repos
        )
    if kind == "workflow_run":
        return WorkflowRunTrigger(
            actions=r.strings("actions"),
            workflows=r.strings("workflows"),
            conclusions=r.strings("conclusions"),
            repos=repos,
        )
    if kind == "fork":
        return ForkTrigger(repos=repos)
    if kind == "star":
        return StarTrigger(actions=r.strings("actions"), repos=repos)
    if kind == "watch":
        return WatchTrigger(actions=r.strings("actions"), repos=repos)
    if kind == "kici_event":
        return KiciEventTrigger(
            event_name=r.str_req("eventName"),
            match=r.conditions("match"),
            not_=r.conditions("not"),
            source=r.str_opt("source"),
        )
    if kind == "workflow_complete":
        return WorkflowCompleteTrigger(name=r.str_opt("name"), status=r.strings("status"), source=r.str_opt("source"))
    if kind == "job_complete":
        return JobCompleteTrigger(
            workflow=r.str_opt("workflow"),
            job=r.str_opt("job"),
            status=r.strings("status"),
            source=r.str_opt("source"),
        )
    if kind == "lifecycle":
        return LifecycleTrigger(
            events=r.strings("events"), sources=r.strings("sources"), description=r.str_opt("description")
        )
    return None


def parse_trigger(obj: Mapping[str, object] | None, path: str = "trigger") -> Trigger:
    """Validate one lock-file trigger object and build its dataclass.

    Unknown fields are ignored; missing list fields are empty. An unknown ``_type`` (or a
    ``null`` entry, which upstream skips) gives :class:`UnknownTrigger`, which never matches,
    so trigger indices stay aligned with the lock file.

    Args:
        obj: the decoded JSON object.
        path: JSON path of ``obj`` used in error messages, e.g. ``workflows[0].triggers[2]``.

    Raises:
        LockfileError: a field has the wrong type, or a glob, regex or JSONPath is invalid;
            ``err.path`` names the exact element (``workflows[0].triggers[2].branches[1]``).
    """
    if obj is None:
        return UnknownTrigger(type_name=None)
    if not isinstance(obj, Mapping):
        raise LockfileError(path, f"expected a trigger object, got {kind_of(obj)}")
    kind = obj.get("_type")
    if not isinstance(kind, str):
        raise LockfileError(f"{path}._type", f"expected a string, got {kind_of(kind)}")
    parsed = _parse_known(kind, FieldReader(obj, path))
    return parsed if parsed is not None else UnknownTrigger(type_name=kind)
