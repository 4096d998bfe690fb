"""Fan-out limits end to end with real ``kici-agent`` processes: ``maxParallel`` caps the matrix children
dispatched at once (agents have room for more), and ``failFast`` stops the rest of a matrix after the first
child fails: a child running on an agent gets ``job.cancel``, children not yet started are cancelled at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_agents_e2e import _job, harness, make_repo
from tests.support import pg as _pg

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures


async def test_max_parallel_caps_matrix_children_and_fail_fast_stops_the_rest(db_url: str, tmp_path: Path) -> None:
    shared = tmp_path / "running"
    shared.mkdir()
    count = {
        "name": "count",
        "run": f'touch "{shared}/$KICI_JOB_ID"; echo "running=$(ls "{shared}" | wc -l)";'
        f' sleep 1; rm "{shared}/$KICI_JOB_ID"',
    }
    capped = _job("w", ["fan"], [count], matrix={"i": ["1", "2", "3", "4", "5"]})
    capped["maxParallel"] = 2
    fast = _job(
        "ff",
        ["fast"],
        [{"name": "go", "run": 'case "$KICI_JOB_NAME" in *bad*) exit 3;; *slow*) sleep 60;; esac'}],
        matrix=["slow", "bad", "later"],
    )
    fast.update({"maxParallel": 2, "failFast": True})
    repo, sha = make_repo(tmp_path, [capped, fast])
    async with harness(db_url, tmp_path) as (h, _):
        await h.add_local_source(repo)
        await h.start_agent("fan-1", "fan", max_concurrency=2)
        await h.start_agent("fan-2", "fan", max_concurrency=2)
        await h.start_agent("fast-1", "fast", max_concurrency=2)
        await h.push(repo, sha)
        run = await h.run_done()
        jobs = await h.jobs()
        assert all(jobs[f"w ({i})"]["status"] == "success" for i in "12345")
        logs = await h.query("SELECT content FROM log_chunks WHERE content LIKE 'running=%%'")
        counts = [int(c["content"].split("=")[1]) for c in logs]
        assert len(counts) == 5 and max(counts) <= 2, counts  # four agent slots, never more than two children
        assert jobs["ff (bad)"]["status"] == "failed"
        reason = "Cancelled: fail-fast after matrix child 'ff (bad)' failed"
        assert jobs["ff (later)"]["status"] == "cancelled" and jobs["ff (later)"]["error_message"] == reason
        assert jobs["ff (later)"]["agent_id"] is None  # never dispatched
        assert jobs["ff (slow)"]["status"] == "cancelled", jobs["ff (slow)"]  # stopped on its agent, not after 60 s
        assert jobs["ff (slow)"]["agent_id"] == "fast-1"
        assert run["status"] == "failed" and run["failure_reason"] == "Failed jobs: ff (bad)"
