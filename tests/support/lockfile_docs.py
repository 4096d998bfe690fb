"""Minimal valid lock-file documents for tests: one static job, one workflow, overridable fields."""

from __future__ import annotations

from typing import Any


def job(name: str = "build", **extra: Any) -> dict[str, Any]:
    return {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "exact", "value": "kici:os:linux"}],
        "needs": [],
        "steps": [{"name": "step-1", "hasOutputs": False}],
        **extra,
    }


def doc(*jobs: dict[str, Any], **workflow_extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 29,
        "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
        "contentHash": "0" * 64,
        "workflows": [
            {
                "name": "ci",
                "contentHash": "",
                "compileSchemaVersion": 0,
                "triggers": [],
                "jobs": list(jobs) or [job()],
                **workflow_extra,
            }
        ],
    }
