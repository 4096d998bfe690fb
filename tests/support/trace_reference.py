"""The decision trace rendered eagerly, check by check, as matching did before it recorded compact traces.

A reference for the property tests (the lazily rendered trace must equal it) and the baseline of
``bench/matching.py``. It evaluates every check of every evaluated trigger and renders its text at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from kici_core import matching
from kici_core import triggers as t
from kici_core.events import NormalisedEvent
from kici_core.jsontypes import JSONValue


def _q(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def trigger_dict(trigger: t.Trigger, event: NormalisedEvent, index: int) -> tuple[bool, int, dict[str, JSONValue]]:
    """(matched, checks evaluated, ``TriggerDecision.to_dict()``) of one trigger."""
    if isinstance(trigger, t.UnknownTrigger):
        kind = trigger.type_name or "null"
        reason = f"unknown trigger type {_q(kind)} never matches"
        return False, 0, {"index": index, "triggerType": kind, "matched": False, "reason": reason, "checks": []}
    entries: list[JSONValue] = []
    for check in matching.trigger_checks(trigger):
        passed = check.test(event)
        entry: dict[str, JSONValue] = {
            "check": check.name,
            "pattern": check.pattern,
            "value": check.value(event),
            "passed": passed,
        }
        if not passed:
            why = check.reason(event)
            entry["reason"] = why
            entries.append(entry)
            return (
                False,
                len(entries),
                {"index": index, "triggerType": trigger.kind, "matched": False, "reason": why, "checks": entries},
            )
        entries.append(entry)
    return (
        True,
        len(entries),
        {"index": index, "triggerType": trigger.kind, "matched": True, "reason": None, "checks": entries},
    )


def evaluate_dict(workflows: Sequence[matching.WorkflowTriggers], event: NormalisedEvent) -> dict[str, JSONValue]:
    """``MatchResult.to_dict()`` of a traced evaluation, computed eagerly."""
    decisions: list[JSONValue] = []
    matched_names: list[JSONValue] = []
    for wf in workflows:
        hit: int | None = None
        count = 0
        rendered: list[JSONValue] = []
        for i, trigger in enumerate(wf.triggers):
            matched, checks, d = trigger_dict(trigger, event, i)
            rendered.append(d)
            count += checks
            if matched:
                hit = i
                break
        if hit is not None:
            matched_names.append(wf.name)
        decisions.append(
            {
                "workflowName": wf.name,
                "matched": hit is not None,
                "matchedTrigger": hit,
                "summary": matching.SUMMARY_MATCHED if hit is not None else matching.SUMMARY_NOT_MATCHED,
                "checksCount": count,
                "triggers": rendered,
            }
        )
    return {
        "eventType": event.type,
        "action": event.action,
        "matchedWorkflows": matched_names,
        "totalWorkflows": len(workflows),
        "decisions": decisions,
    }
