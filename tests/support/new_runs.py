"""Runs and jobs as the pipeline hands them to the inbox and the run store, for the tests of those stores.

Every field has the value most tests want (a GitHub push to ``acme/app``'s main branch); a test names only what
it is about.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from kici_core.jsontypes import JSONObject
from kici_core.run_records import NeedEdge, NewJob, NewRun

REPO_URL = "https://example.test/acme/app.git"


def new_job(
    name: str = "build",
    *,
    needs: Sequence[str] = (),
    runs_on: tuple[JSONObject, ...] = (),
    job_config: JSONObject | None = None,
    matrix_values: JSONObject | None = None,
) -> NewJob:
    """A job named ``name`` (its config ``{"name": name}`` unless given); runnable when it needs nothing, each
    need on the upstream's success."""
    return NewJob(
        job_id=str(uuid.uuid4()),
        name=name,
        base_name=name,
        matrix_values=matrix_values,
        needs=tuple(NeedEdge(upstream_name=n, run_on=("success",)) for n in needs),
        runs_on=runs_on,
        exclude_labels=(),
        job_config={"name": name} if job_config is None else job_config,
        runnable=not needs,
    )


def new_run(
    *jobs: NewJob,
    workflow: str = "ci",
    run_id: str | None = None,
    provider: str = "github",
    routing_key: str = "github:1",
    repo_url: str | None = REPO_URL,
    ref: str = "refs/heads/main",
    sha: str = "a" * 40,
    trigger_decision: Any = None,
    event: JSONObject | None = None,
) -> NewRun:
    """A run of ``workflow`` in ``acme/app`` with ``jobs``."""
    return NewRun(
        run_id=run_id or str(uuid.uuid4()),
        workflow_name=workflow,
        provider=provider,
        routing_key=routing_key,
        repo_identifier="acme/app",
        repo_url=repo_url,
        ref=ref,
        sha=sha,
        trigger_decision=trigger_decision,
        jobs=jobs,
        event=event,
    )
