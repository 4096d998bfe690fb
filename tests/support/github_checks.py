"""Validation and shaping of Checks API bodies for the local GitHub API server (422s shaped like GitHub's)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tests.support.github_model import Reply

CHECK_STATUSES = ("queued", "in_progress", "completed", "waiting", "requested", "pending")
CHECK_CONCLUSIONS = ("action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out")
SHA = re.compile(r"[0-9a-f]{40}")
CHECKS_DOCS = "https://docs.github.com/rest/checks/runs"


def invalid(field_name: str, code: str = "invalid", message: str | None = None) -> Reply:
    error: dict[str, Any] = {"resource": "CheckRun", "code": code, "field": field_name}
    if message:
        error["message"] = message
    return Reply(422, {"message": "Validation Failed", "errors": [error], "documentation_url": CHECKS_DOCS})


def check_body(body: bytes, *, create: bool) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise Reply(400, {"message": "Problems parsing JSON", "documentation_url": CHECKS_DOCS}) from None
    if not isinstance(data, dict):
        raise Reply(400, {"message": "Problems parsing JSON", "documentation_url": CHECKS_DOCS})
    if create and not isinstance(data.get("name"), str):
        raise invalid("name", "missing_field")
    if create and not (isinstance(data.get("head_sha"), str) and SHA.fullmatch(data["head_sha"])):
        raise Reply(
            422, {"message": f"No commit found for SHA: {data.get('head_sha')}", "documentation_url": CHECKS_DOCS}
        )
    status = data.get("status")
    if status is not None and status not in CHECK_STATUSES:
        raise invalid("status")
    conclusion = data.get("conclusion")
    if conclusion is not None and conclusion not in CHECK_CONCLUSIONS:
        raise invalid("conclusion")
    if status == "completed" and conclusion is None:
        raise invalid("conclusion", "missing_field", "Conclusion is required when status is completed")
    output = data.get("output")
    if output is not None:
        if (
            not isinstance(output, dict)
            or not isinstance(output.get("title"), str)
            or not isinstance(output.get("summary"), str)
        ):
            raise invalid("output", "missing_field", "output needs a title and a summary")
        if len(output["summary"]) > 65535:
            raise invalid("output.summary", "too_long", "Only 65535 characters are allowed")
    for key in ("started_at", "completed_at"):
        if data.get(key) is not None:
            try:
                datetime.fromisoformat(str(data[key]).replace("Z", "+00:00"))
            except ValueError:
                raise invalid(key) from None
    return data


def apply_check(run: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key in (
        "name",
        "head_sha",
        "external_id",
        "details_url",
        "started_at",
        "completed_at",
        "status",
        "conclusion",
    ):
        if key in data:
            run[key] = data[key]
    if data.get("conclusion") is not None:
        run["status"] = "completed"
    if isinstance(data.get("output"), dict):
        run["output"] = {
            "title": data["output"].get("title"),
            "summary": data["output"].get("summary"),
            "text": data["output"].get("text"),
        }


def public_run(run: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "repo"}
