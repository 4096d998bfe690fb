"""The decision trace of trigger matching: why each workflow and trigger matched or did not.

:class:`MatchResult` holds one :class:`WorkflowDecision` per workflow; each holds the
:class:`TriggerDecision` of every evaluated trigger, made of :class:`TraceEntry` checks. All of
them serialise to the JSON stored in the event log (``to_dict``).

Matching records the trace compactly: per workflow, for each evaluated trigger, the position of the
check that rejected it (``-1``: every check passed). The text (the event's values, the reasons) is
rendered from that record, the trigger's checks and the event only when a trace is read, and at most
once per result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from kici_core.events import NormalisedEvent
from kici_core.jsontypes import JSONValue

__all__ = [
    "MATCHED",
    "SUMMARY_MATCHED",
    "SUMMARY_NOT_MATCHED",
    "MatchResult",
    "RenderMemo",
    "Steps",
    "TraceEntry",
    "TraceSource",
    "TriggerDecision",
    "WorkflowDecision",
]

SUMMARY_MATCHED = "Trigger conditions met"
SUMMARY_NOT_MATCHED = "No matching trigger"

MATCHED = -1
"""The step of a trigger whose every check passed."""

Steps = tuple[int, ...]
"""One workflow's compact trace: for each evaluated trigger in order, the position of the check that
rejected it (0 is the event-type check) or :data:`MATCHED`."""


class TraceSource(Protocol):
    """A compiled trigger, as far as rendering its trace needs it."""

    def checks_run(self, step: int) -> int:
        """How many checks the trace of a trigger with ``step`` lists."""
        ...

    def decision(self, index: int, step: int, event: NormalisedEvent) -> TriggerDecision:
        """The rendered decision of trigger ``index`` whose evaluation against ``event`` ended at ``step``."""
        ...

    def decision_dict(self, index: int, step: int, event: NormalisedEvent) -> dict[str, JSONValue]:
        """``decision(index, step, event).to_dict()``, without building the objects."""
        ...

    def memo_key(self, step: int, event: NormalisedEvent) -> tuple[str, ...] | None:
        """What the rendered decision depends on besides ``step`` (the checks' values), or None when it
        depends on more of the event (it is then rendered every time)."""
        ...


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


class WorkflowDecision:
    """Outcome of one workflow; ``triggers`` holds the evaluated triggers (empty without trace).

    Built from the compact record (``steps``); the trigger decisions are rendered on first access.
    """

    __slots__ = ("_event", "_sources", "_steps", "_triggers", "matched_trigger", "workflow_name")

    def __init__(
        self,
        *,
        workflow_name: str,
        matched_trigger: int | None,
        steps: Steps | None = None,
        sources: Sequence[TraceSource] = (),
        event: NormalisedEvent | None = None,
    ) -> None:
        self.workflow_name = workflow_name
        self.matched_trigger = matched_trigger
        self._steps = steps
        self._sources = sources
        self._event = event
        self._triggers: tuple[TriggerDecision, ...] | None = None if steps else ()

    @property
    def matched(self) -> bool:
        """True when a trigger matched."""
        return self.matched_trigger is not None

    @property
    def summary(self) -> str:
        """:data:`SUMMARY_MATCHED` or :data:`SUMMARY_NOT_MATCHED`."""
        return SUMMARY_MATCHED if self.matched_trigger is not None else SUMMARY_NOT_MATCHED

    @property
    def triggers(self) -> tuple[TriggerDecision, ...]:
        """The rendered decision of every evaluated trigger (triggers after the first match are not evaluated)."""
        rendered = self._triggers
        if rendered is None:
            assert self._steps is not None and self._event is not None
            event, sources = self._event, self._sources
            rendered = tuple(sources[i].decision(i, step, event) for i, step in enumerate(self._steps))
            self._triggers = rendered
        return rendered

    @property
    def checks_count(self) -> int:
        """Number of checks evaluated across this workflow's triggers."""
        if not self._steps:
            return 0
        sources = self._sources
        return sum(sources[i].checks_run(step) for i, step in enumerate(self._steps))

    def summary_dict(self) -> dict[str, JSONValue]:
        """``{workflowName, matched, matchedTrigger, summary, checksCount}`` (as forwarded upstream)."""
        return {
            "workflowName": self.workflow_name,
            "matched": self.matched_trigger is not None,
            "matchedTrigger": self.matched_trigger,
            "summary": self.summary,
            "checksCount": self.checks_count,
        }

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe form: the summary plus every trigger decision."""
        d = self.summary_dict()
        if self._triggers is not None:
            d["triggers"] = [x.to_dict() for x in self._triggers]
        else:
            assert self._steps is not None and self._event is not None
            event, sources = self._event, self._sources
            d["triggers"] = [sources[i].decision_dict(i, step, event) for i, step in enumerate(self._steps)]
        return d

    def __repr__(self) -> str:
        return (
            f"WorkflowDecision(workflow_name={self.workflow_name!r}, matched_trigger={self.matched_trigger!r}, "
            f"steps={self._steps!r})"
        )


class RenderMemo:
    """Rendered decisions of one lock file by what they depend on, so that deliveries with the same values
    (branch, event type, action...) share one rendering.

    With ``getters`` (every check of the lock file is keyed: see :meth:`TraceSource.memo_key`), a whole
    result's decisions are keyed by the getters' values; otherwise each workflow's decision is keyed by its
    steps and its checks' values, when they are keyed. Bounded: emptied when it holds about ``budget``
    rendered workflow decisions.
    """

    __slots__ = ("_entries", "getters", "max_entries")

    def __init__(
        self, *, getters: Sequence[Callable[[NormalisedEvent], str]] | None, workflows: int, budget: int = 512
    ) -> None:
        self.getters = tuple(getters) if getters is not None else None
        self.max_entries = max(8, budget // max(1, workflows)) if getters is not None else budget
        self._entries: dict[tuple[object, ...], object] = {}

    def get(self, key: tuple[object, ...]) -> object | None:
        """The rendering stored under ``key``, or None."""
        return self._entries.get(key)

    def put(self, key: tuple[object, ...], rendered: object) -> None:
        """Store ``rendered`` under ``key``."""
        entries = self._entries
        if len(entries) >= self.max_entries:
            entries.clear()
        entries[key] = rendered

    def __len__(self) -> int:
        return len(self._entries)


class MatchResult:
    """Every workflow's decision for one event, in lock-file order.

    Holds what matching recorded: the workflows' names and triggers (shared by every result of one lock
    file), the matching workflows (``found``: workflow index -> trigger index, in workflow order) and, when
    traced, each workflow's :data:`Steps`. :attr:`decisions` and :meth:`to_dict` render from that.
    """

    __slots__ = ("_decisions", "_event", "_found", "_memo", "_names", "_sources", "_steps", "action", "event_type")

    def __init__(
        self,
        *,
        event: NormalisedEvent,
        names: Sequence[str],
        sources: Sequence[Sequence[TraceSource]],
        found: dict[int, int],
        steps: Sequence[Steps] | None,
        memo: RenderMemo | None = None,
    ) -> None:
        self.event_type = event.type
        self.action = event.action
        self._event = event
        self._names = names
        self._sources = sources
        self._found = found
        self._steps = steps
        self._memo = memo
        self._decisions: tuple[WorkflowDecision, ...] | None = None

    @property
    def decisions(self) -> tuple[WorkflowDecision, ...]:
        """One decision per workflow, in lock-file order."""
        built = self._decisions
        if built is None:
            built = tuple(self._decision(wi) for wi in range(len(self._names)))
            self._decisions = built
        return built

    def _decision(self, wi: int) -> WorkflowDecision:
        steps = self._steps
        return WorkflowDecision(
            workflow_name=self._names[wi],
            matched_trigger=self._found.get(wi),
            steps=None if steps is None else steps[wi],
            sources=self._sources[wi],
            event=self._event,
        )

    @property
    def matched(self) -> tuple[WorkflowDecision, ...]:
        """The matching workflows (each becomes its own run)."""
        if self._decisions is not None:
            decisions = self._decisions
            return tuple(decisions[wi] for wi in self._found)
        return tuple(self._decision(wi) for wi in self._found)

    @property
    def matched_names(self) -> tuple[str, ...]:
        """Names of the matching workflows."""
        names = self._names
        return tuple(names[wi] for wi in self._found)

    def to_dict(self) -> dict[str, JSONValue]:
        """JSON-safe form (stored in the event log).

        With a :class:`RenderMemo`, a workflow's part may be shared with other results of the same lock file
        (it is the same text): treat the returned value as read-only.
        """
        steps = self._steps
        decisions: list[JSONValue]
        if steps is None or self._decisions is not None:
            decisions = [d.to_dict() for d in self.decisions]
        else:
            decisions = self._render(steps)
        return {
            "eventType": self.event_type,
            "action": self.action,
            "matchedWorkflows": list(self.matched_names),
            "totalWorkflows": len(self._names),
            "decisions": decisions,
        }

    def _render(self, steps: Sequence[Steps]) -> list[JSONValue]:
        memo, event = self._memo, self._event
        if memo is not None and memo.getters is not None:
            key = tuple([get(event) for get in memo.getters])
            hit = memo.get(key)
            if hit is None:
                hit = self._render_workflows(steps, None)
                memo.put(key, hit)
            return hit  # type: ignore[return-value]
        return self._render_workflows(steps, memo)

    def _render_workflows(self, steps: Sequence[Steps], memo: RenderMemo | None) -> list[JSONValue]:
        found, event, all_sources = self._found, self._event, self._sources
        out: list[JSONValue] = []
        for wi, name in enumerate(self._names):
            workflow_steps, sources = steps[wi], all_sources[wi]
            key: tuple[object, ...] | None = None
            if memo is not None:
                parts = [sources[i].memo_key(step, event) for i, step in enumerate(workflow_steps)]
                key = None if any(p is None for p in parts) else (wi, workflow_steps, *parts)
                if key is not None:
                    hit = memo.get(key)
                    if hit is not None:
                        out.append(hit)  # type: ignore[arg-type]
                        continue
            matched_trigger = found.get(wi)
            if len(workflow_steps) == 1:  # the common shape, without the generator machinery
                source, step = sources[0], workflow_steps[0]
                count = source.checks_run(step)
                triggers: list[JSONValue] = [source.decision_dict(0, step, event)]
            else:
                count = sum(sources[i].checks_run(step) for i, step in enumerate(workflow_steps))
                triggers = [sources[i].decision_dict(i, step, event) for i, step in enumerate(workflow_steps)]
            rendered: dict[str, JSONValue] = {
                "workflowName": name,
                "matched": matched_trigger is not None,
                "matchedTrigger": matched_trigger,
                "summary": SUMMARY_MATCHED if matched_trigger is not None else SUMMARY_NOT_MATCHED,
                "checksCount": count,
                "triggers": triggers,
            }
            if key is not None and memo is not None:
                memo.put(key, rendered)
            out.append(rendered)
        return out

    def __repr__(self) -> str:
        return f"MatchResult(event_type={self.event_type!r}, action={self.action!r}, matched={self.matched_names!r})"
