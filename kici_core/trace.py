"""The decision trace of trigger matching: why each workflow and trigger matched or did not.

:class:`MatchResult` holds one :class:`WorkflowDecision` per workflow; each holds the
:class:`TriggerDecision` of every evaluated trigger, made of :class:`TraceEntry` checks. All of
them serialise to the JSON stored in the event log (``to_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kici_core.jsontypes import JSONValue

__all__ = [
    "SUMMARY_MATCHED",
    "SUMMARY_NOT_MATCHED",
    "MatchResult",
    "TraceEntry",
    "TriggerDecision",
    "WorkflowDecision",
]

SUMMARY_MATCHED = "Trigger conditions met"
SUMMARY_NOT_MATCHED = "No matching trigger"

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
