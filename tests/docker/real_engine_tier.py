"""``make test-docker``: the auto-scaler against a real Docker engine (not part of ``make test`` / CI).

Needs root, ``dockerd`` (Debian: ``apt-get install -y docker.io``) and ``nft``. The test starts its own
``dockerd`` (own socket and data directory, ``--storage-driver=vfs --iptables=false --bridge=none``), builds the
agent image from this machine's files with ``docker import`` (no registry is reachable; see
``agent_rootfs.py``), starts ``kici-standalone`` with a container scaler on that engine (network isolation on:
the real nftables check, the ``kici-agent-net`` bridge and per-container rules in the host's ``ip kici``
table), pushes to a local repository and waits for the job to run in a scaler-spawned container and for the
container to be gone. What happened is printed (run with ``-s``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from kici_adapters.containers.engine import EngineClient
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.stores import PgSourceStore
from kici_core.source_records import GenericSource
from tests.docker import agent_rootfs
from tests.e2e.test_agents_e2e import _job, make_repo
from tests.support import pg as _pg
from tests.support.orchestrator import OrchestratorProcess, clean_env

pytestmark = pytest.mark.anyio
pg_server, pg_template, db_url = _pg.pg_server, _pg.pg_template, _pg.db_url  # fixtures

IMAGE = "kici-agent:local"
BOUND = 180.0


def _wait(what: str, check: Any, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)  # an external daemon: nothing to wait on but its state


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Path]:
    """A private dockerd; yields its socket."""
    assert os.geteuid() == 0 and shutil.which("dockerd"), "needs root and dockerd (apt-get install -y docker.io)"
    home = Path(tempfile.mkdtemp(prefix="kdk-"))
    sock = home / "docker.sock"
    log = open(home / "dockerd.log", "wb")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--host",
            f"unix://{sock}",
            "--data-root",
            str(home / "data"),
            "--exec-root",
            str(home / "exec"),
            "--pidfile",
            str(home / "docker.pid"),
            "--storage-driver=vfs",
            "--iptables=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait(
            "dockerd's socket",
            lambda: (
                sock.exists()
                and subprocess.run(["docker", "-H", f"unix://{sock}", "version"], capture_output=True).returncode == 0
            ),
        )
        rootfs = home / "rootfs.tar"
        agent_rootfs.build(rootfs)
        subprocess.run(
            [
                "docker",
                "-H",
                f"unix://{sock}",
                "import",
                "--change",
                f"ENV {agent_rootfs.ENV}",
                "--change",
                "ENV PATH=/usr/local/bin:/usr/bin:/bin",
                "--change",
                f"CMD {agent_rootfs.CMD}",
                str(rootfs),
                IMAGE,
            ],
            check=True,
            capture_output=True,
        )
        rootfs.unlink()
        print(
            "\n[docker tier] dockerd "
            + subprocess.run(["dockerd", "--version"], capture_output=True, text=True).stdout.strip()
            + f" at {sock}; image {IMAGE} imported"
        )
        yield sock
    finally:
        subprocess.run(["docker", "-H", f"unix://{sock}", "network", "rm", "kici-agent-net"], capture_output=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        subprocess.run(["nft", "delete", "table", "ip", "kici"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _query(url: str, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[arg-type]


async def test_a_job_runs_in_a_container_the_scaler_starts_on_a_real_engine(
    dockerd: Path, db_url: str, tmp_path: Path
) -> None:
    repo, sha = make_repo(
        tmp_path,
        [
            _job(
                "build",
                ["linux", "docker"],
                [{"name": "inside", "run": 'echo "hello from $(hostname) uid=$(id -u)"; cat /etc/hostname; uname -r'}],
            )
        ],
    )
    port = _free_port()
    config = tmp_path / "scalers.yaml"
    config.write_text(f"""\
version: 1
scalers:
  - name: docker
    type: container
    maxAgents: 2
    socketPath: {dockerd}
    labelSets:
      - labels: [linux, docker]
        image: {IMAGE}
        imagePullPolicy: Never
        volumes: ["{repo}:{repo}:ro"]
        resources: {{ memory: "512m", cpus: 1 }}
""")
    source_id = str(uuid.uuid4())
    async with Database(db_url, max_size=2) as db:
        await PgSourceStore(db).add_generic(
            GenericSource(
                id=source_id,
                org_id="acme",
                name="repo",
                routing_key=f"generic:acme:{source_id}",
                provider_type="local",
                verification_method="none",
                git_config={"url": repo.as_uri()},
            )
        )
    orch = OrchestratorProcess(
        "kici-standalone",
        clean_env(
            KICI_MODE="independent",
            KICI_DATABASE_URL=db_url,
            KICI_SECRET_KEY="ab" * 32,
            KICI_HOST="0.0.0.0",
            KICI_PORT=str(port),
            KICI_ORCHESTRATOR_URL=f"ws://172.30.0.1:{port}/ws",
            KICI_SCALER_CONFIG_PATH=str(config),
            KICI_DATA_DIR=str(tmp_path / "data"),
            KICI_AUTO_MIGRATE="false",
        ),
    )
    await anyio.to_thread.run_sync(orch.start)
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            body = {
                "ref": "refs/heads/main",
                "before": "0" * 40,
                "after": sha,
                "repository": {
                    "full_name": "acme/repo",
                    "name": "repo",
                    "default_branch": "main",
                    "clone_url": repo.as_uri(),
                },
                "sender": {"login": "t", "id": 1},
            }
            r = await http.post(
                "/webhook/acme/generic/repo",
                json=body,
                headers={"x-event-type": "push", "x-delivery-id": str(uuid.uuid4())},
            )
            assert r.status_code in (200, 202), r.text

        def finished() -> bool:
            rows = _query(db_url, "SELECT status FROM execution_runs")
            return bool(rows) and rows[0]["status"] in ("success", "failed", "cancelled")

        try:
            await anyio.to_thread.run_sync(lambda: _wait("the run to finish", finished, BOUND))
        except AssertionError:
            raise AssertionError(
                f"run did not finish: {_query(db_url, 'SELECT * FROM scaler_agents')}\n{orch.tail(60)}"
            ) from None
        ran = time.monotonic() - started

        def removed() -> bool:
            rows = _query(db_url, "SELECT state FROM scaler_agents")
            return bool(rows) and all(r["state"] in ("removed", "failed") for r in rows)

        await anyio.to_thread.run_sync(lambda: _wait("the container removed", removed, 90))
        run = _query(db_url, "SELECT status FROM execution_runs")[0]
        job = _query(db_url, "SELECT agent_id, status, error_message FROM execution_jobs")[0]
        rows = _query(
            db_url,
            "SELECT agent_id, container_id, container_ip, state, error, created_at, started_at,"
            " ended_at FROM scaler_agents",
        )
        logs = [c["content"] for c in _query(db_url, "SELECT content FROM log_chunks ORDER BY id")]
        engine = EngineClient(socket_path=str(dockerd))
        try:
            left = await engine.list_managed()
        finally:
            await engine.aclose()
        print(
            f"[docker tier] run {run['status']} in {ran:.1f} s; job ran on agent {job['agent_id']}"
            f" ({job['status']}{': ' + job['error_message'] if job['error_message'] else ''})"
        )
        for row in rows:
            print(
                f"[docker tier] container {row['agent_id']} id={str(row['container_id'])[:12]} ip={row['container_ip']}"
                f" state={row['state']} ({row['error']}); started in "
                f"{(row['started_at'] - row['created_at']).total_seconds():.2f} s, lived "
                f"{(row['ended_at'] - row['created_at']).total_seconds():.1f} s"
            )
        print(f"[docker tier] step output: {logs}")
        print(f"[docker tier] kici-managed containers left on the engine: {len(left)}")
        print("[docker tier] orchestrator log (scaler lines):")
        for line in orch.lines:
            if "scaler" in line.lower() or "Detected" in line or "orphaned" in line:
                print("   ", line[:300])
        assert run["status"] == "success", orch.tail(60)
        assert job["agent_id"].startswith("kici-docker-") and len(rows) == 1
        assert rows[0]["container_ip"] and rows[0]["container_ip"].startswith("172.30.")
        assert any("hello from" in (chunk or "") for chunk in logs)
        assert left == []
    finally:
        assert orch.stop() in (0, -signal.SIGTERM)
