"""kici-agent against a scripted orchestrator peer speaking the agent protocol over real websockets."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from kici_core.errors import ConfigError
from kici_runtime.agent import config as agent_config
from kici_runtime.agent.connection import AuthRejected, backoff_delay
from kici_runtime.agent.job import UNSUPPORTED_STEP
from kici_runtime.agent.service import Agent
from tests.support import waits
from tests.support.agent_peer import ScriptedOrchestrator

pytestmark = pytest.mark.anyio

TOKEN = "kat_" + "3f9a0c41" * 8
CLONE_TOKEN = "ghs_exampleInstallationToken0123456789"
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


# --- fixtures ---------------------------------------------------------------------------------------
def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=KiCI Test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, str, str]:
    """A local repository on ``main`` with two commits; returns (path, first sha, second sha)."""
    repo = tmp_path / "origin"
    (repo / "sub").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("widgets\n")
    (repo / "sub" / "version.txt").write_text("v1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "sub" / "version.txt").write_text("v2\n")
    _git(repo, "commit", "-q", "-am", "second")
    return repo, first, _git(repo, "rev-parse", "HEAD")


def _config(peer: ScriptedOrchestrator, tmp_path: Path, **overrides: Any) -> agent_config.AgentConfig:
    base = agent_config.AgentConfig(
        url=agent_config.normalise_url(peer.url),
        token=TOKEN,
        agent_id="build-01-4f2a9c1e",
        labels=("linux", "docker"),
        max_concurrency=1,
        work_dir=tmp_path / "work",
        hostname="build-01",
        platform="linux",
        arch="x64",
        step_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"},
        heartbeat_interval_s=0.2,
        job_heartbeat_interval_s=0.2,
        grace_period_s=5,
        log_flush_interval_s=0.05,
        reconnect_base_delay_s=0.05,
        reconnect_max_delay_s=0.2,
    )
    (tmp_path / "work").mkdir(exist_ok=True)
    return replace(base, **overrides)


@asynccontextmanager
async def running_agent(config: agent_config.AgentConfig) -> AsyncIterator[Agent]:
    agent = Agent(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run)
        yield agent
        for runner in list(agent.runners.values()):
            runner.cancel("test over", force=True)
        with waits.within(10, "the agent's jobs to end after a forced cancel", lambda: sorted(agent.runners)):
            await agent.wait_idle()
        tg.cancel_scope.cancel()


def _is_job(job_id: str, kind: str, **fields: Any) -> Any:
    return lambda m: (
        m.get("jobId") == job_id and m.get("type") == kind and all(m.get(k) == v for k, v in fields.items())
    )


def _sequence(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(type, stepIndex/state) per message, heartbeats dropped, consecutive log chunks of a step merged."""
    out: list[tuple[Any, ...]] = []
    for m in messages:
        kind = m["type"]
        if kind == "job.heartbeat":
            continue
        if kind == "log.chunk":
            item: tuple[Any, ...] = (kind, m["stepIndex"])
        elif kind == "step.status":
            item = (kind, m["stepIndex"], m["state"])
        elif kind == "job.status":
            item = (kind, m["state"])
        else:
            item = (kind,)
        if not (kind == "log.chunk" and out and out[-1] == item):
            out.append(item)
    return out


def _lines(messages: list[dict[str, Any]], step_index: int) -> list[str]:
    return [line for m in messages if m["type"] == "log.chunk" and m["stepIndex"] == step_index for line in m["lines"]]


def _step_status(messages: list[dict[str, Any]], index: int, state: str) -> dict[str, Any]:
    return next(m for m in messages if m["type"] == "step.status" and m["stepIndex"] == index and m["state"] == state)


# --- configuration ----------------------------------------------------------------------------------
def test_url_normalisation_appends_ws_and_maps_schemes() -> None:
    assert agent_config.normalise_url("http://orch:4000") == "ws://orch:4000/ws"
    assert agent_config.normalise_url("https://ci.example.com/orchestrator/") == "wss://ci.example.com/orchestrator/ws"
    assert agent_config.normalise_url("ws://orch:4000/ws") == "ws://orch:4000/ws"
    for bad in ("", "ftp://x", "ws://", "ws://h/ws?x=1"):
        with pytest.raises(ConfigError):
            agent_config.normalise_url(bad)


def test_labels_platform_and_env_loading(tmp_path: Path) -> None:
    assert agent_config.parse_labels(" linux, docker,,linux ") == ("linux", "docker")
    with pytest.raises(ConfigError, match="reserved"):
        agent_config.parse_labels("linux,kici:os:linux")
    assert agent_config.wire_platform("linux") == "linux"
    assert agent_config.wire_platform("darwin") == "darwin"
    assert [agent_config.wire_arch(m) for m in ("x86_64", "AMD64", "aarch64", "armv7l")] == [
        "x64",
        "x64",
        "arm64",
        "arm",
    ]
    assert agent_config.auto_labels(platform="darwin", arch="arm64", hostname="mac") == (
        "kici:os:macos",
        "kici:os:darwin",
        "kici:arch:arm64",
        "kici:host:mac",
    )
    env = {
        "KICI_ORCHESTRATOR_URL": "http://o:4000",
        "KICI_AGENT_TOKEN": TOKEN,
        "KICI_AGENT_LABELS": "gpu",
        "KICI_AGENT_MAX_CONCURRENCY": "3",
        "KICI_AGENT_WORK_DIR": str(tmp_path / "w"),
        "PATH": "/bin",
    }
    cfg = agent_config.load_config(env=env, labels="linux,arm")
    assert (cfg.url, cfg.token, cfg.labels, cfg.max_concurrency) == ("ws://o:4000/ws", TOKEN, ("linux", "arm"), 3)
    assert cfg.step_env == {"PATH": "/bin"}  # KICI_* (the agent token) never reaches steps
    assert cfg.agent_id == agent_config.load_config(env=env).agent_id  # stable for a given work dir
    assert cfg.agent_id.startswith(f"{cfg.hostname}-")
    with pytest.raises(ConfigError, match="MAX_CONCURRENCY"):
        agent_config.load_config(env={**env, "KICI_AGENT_MAX_CONCURRENCY": "0"})


def test_backoff_grows_with_jitter_and_caps() -> None:
    assert backoff_delay(0, base_s=1, max_s=60, jitter=0) == 1
    assert backoff_delay(2, base_s=1, max_s=60, jitter=0.25) == pytest.approx(2.25 * 1.25)
    assert backoff_delay(40, base_s=1, max_s=60, jitter=0.49) == 60


# --- handshake --------------------------------------------------------------------------------------
async def test_handshake_registers_and_heartbeats(tmp_path: Path) -> None:
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path, max_concurrency=2)):
        auth = (await peer.next()).message
        assert auth == {"type": "auth.request", "token": TOKEN, "protocolVersion": 1}
        register = (await peer.next()).message
        assert register["type"] == "agent.register"
        assert register["messageId"].startswith("register-build-01-4f2a9c1e-")
        assert register["agentId"] == "build-01-4f2a9c1e"
        assert register["labels"] == [
            "linux",
            "docker",
            "kici:os:linux",
            "kici:arch:x64",
            "kici:arch:amd64",
            "kici:host:build-01",
        ]
        assert (register["platform"], register["arch"], register["maxConcurrency"]) == ("linux", "x64", 2)
        assert isinstance(register["version"], str) and "inFlightJobs" not in register
        assert (await peer.next()).message["type"] == "config.ack"
        beat = (await peer.next()).message
        assert beat.keys() == {"type", "timestamp"} and beat["type"] == "heartbeat"
        assert (await peer.next()).message["type"] == "heartbeat"
        assert peer.paths == ["/ws"]


async def test_auth_failure_stops_for_good(tmp_path: Path) -> None:
    async with ScriptedOrchestrator(token="kat_other") as peer:
        agent = Agent(_config(peer, tmp_path))
        with (
            waits.within(10, "the agent to give up after auth.failure"),
            pytest.raises(AuthRejected, match="Invalid or expired token"),
        ):
            await agent.run()
        assert len(peer.connections) == 1
        assert [r.message["type"] for r in peer.received] == ["auth.request"]


# --- jobs -------------------------------------------------------------------------------------------
async def test_job_sequence_checkout_env_logs_and_continue_on_error(
    tmp_path: Path, origin: tuple[Path, str, str]
) -> None:
    repo, first, _second = origin
    job_config = {
        "name": "test (linux)",
        "env": {"JOB_LEVEL": "1", "GREETING": "job"},
        "steps": [
            {
                "name": "greet",
                "workingDirectory": "sub",
                "env": {"GREETING": "world"},
                "run": 'echo "hello $GREETING from $(basename "$PWD")"; echo "job=$JOB_LEVEL"; '
                'test "$KICI_SHA" = "' + first + '"; test -z "${KICI_AGENT_TOKEN:-}"; cat version.txt',
            },
            {"name": "flaky", "continueOnError": True, "run": "echo 'about to fail' >&2; exit 3"},
            {"name": "last", "run": "printf 'no newline at end'"},
        ],
    }
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)):
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        run_id, job_id = await peer.dispatch(
            job_config=job_config, repo_url=str(repo), ref="main", sha=first, token=CLONE_TOKEN
        )
        await peer.wait_for(_is_job(job_id, "job.status", state="success"))
        status = await peer.wait_for(lambda m: m["type"] == "agent.status")
        msgs = peer.job_messages(job_id)
    assert _sequence(msgs) == [
        ("job.ack",),
        ("job.status", "running"),
        ("log.chunk", -1),
        ("step.status", 0, "running"),
        ("log.chunk", 0),
        ("step.status", 0, "success"),
        ("step.status", 1, "running"),
        ("log.chunk", 1),
        ("step.status", 1, "failed"),
        ("step.status", 2, "running"),
        ("log.chunk", 2),
        ("step.status", 2, "success"),
        ("job.status", "success"),
    ]
    assert all(m["runId"] == run_id and isinstance(m["timestamp"], int) for m in msgs)
    assert all(isinstance(m.get("messageId"), str) for m in msgs if m["type"] != "job.heartbeat")
    assert _lines(msgs, 0) == ["hello world from sub", "job=1", "v1"]
    assert _lines(msgs, 1) == ["about to fail"]
    assert _lines(msgs, 2) == ["no newline at end"]
    assert any("HEAD is " + first in line for line in _lines(msgs, -1))
    failed = _step_status(msgs, 1, "failed")
    assert failed["stepName"] == "flaky"
    assert failed["data"] == {
        "durationMs": failed["data"]["durationMs"],
        "step_type": "step",
        "exitCode": 3,
        "error": "exit code 3",
    }
    assert failed["logBytesStreamed"] == len("about to fail")
    assert _step_status(msgs, 0, "success")["data"]["exitCode"] == 0
    final = msgs[-1]
    assert final["type"] == "job.status" and "error" not in final["data"]
    assert [(r["name"], r["status"]) for r in final["data"]["stepResults"]] == [
        ("greet", "success"),
        ("flaky", "failed"),
        ("last", "success"),
    ]
    assert final["data"]["stepResults"][1]["error"] == "exit code 3"
    assert status.message["activeJobs"] == 0 and status.message["agentId"] == "build-01-4f2a9c1e"
    assert CLONE_TOKEN not in repr(peer.received)
    assert list((tmp_path / "work").iterdir()) == []  # the work directory is removed


async def test_unsupported_step_fails_the_job(tmp_path: Path) -> None:
    job_config = {
        "checkout": False,
        "steps": [{"name": "uses-action", "uses": "actions/checkout@v4"}, {"name": "never", "run": "echo never"}],
    }
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)):
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        _run, job_id = await peer.dispatch(job_config=job_config)
        await peer.wait_for(_is_job(job_id, "job.status", state="failed"))
        msgs = peer.job_messages(job_id)
    assert _sequence(msgs) == [
        ("job.ack",),
        ("job.status", "running"),
        ("log.chunk", -1),
        ("step.status", 0, "running"),
        ("log.chunk", 0),
        ("step.status", 0, "failed"),
        ("step.status", 1, "skipped"),
        ("job.status", "failed"),
    ]
    assert _lines(msgs, 0) == [UNSUPPORTED_STEP]
    assert _step_status(msgs, 0, "failed")["data"]["error"] == UNSUPPORTED_STEP
    assert msgs[-1]["data"]["error"] == f"Step 'uses-action' failed: {UNSUPPORTED_STEP}"
    assert [r["status"] for r in msgs[-1]["data"]["stepResults"]] == ["failed", "skipped"]


async def test_cancel_kills_a_sleeping_step_and_busy_rejects(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    job_config = {
        "checkout": False,
        "steps": [
            {"name": "wait", "run": f"sleep 300 & echo $! > {pid_file}; echo started; wait"},
            {"name": "after", "run": "echo after"},
        ],
    }
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)):
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        run_id, job_id = await peer.dispatch(job_config=job_config)
        await peer.wait_for(lambda m: m.get("jobId") == job_id and "started" in m.get("lines", []))
        await peer.wait_for(_is_job(job_id, "job.heartbeat"))
        sleep_pid = int(pid_file.read_text())
        assert psutil.pid_exists(sleep_pid)
        _run2, other = await peer.dispatch(job_config=job_config)
        reject = await peer.wait_for(_is_job(other, "job.reject"))
        assert reject.message["reason"] == "busy"
        await peer.wait_for(lambda m: m["type"] == "agent.status")
        await peer.send(
            {"type": "job.cancel", "messageId": "m1", "runId": "nope", "jobId": "unknown", "reason": "ignored"}
        )
        await peer.send(
            {"type": "job.cancel", "messageId": "m2", "runId": run_id, "jobId": job_id, "reason": "Cancelled by user"}
        )
        final = (await peer.wait_for(_is_job(job_id, "job.status", state="cancelled"))).message
        msgs = peer.job_messages(job_id)
    assert _sequence(msgs)[-3:] == [
        ("step.status", 0, "cancelled"),
        ("step.status", 1, "skipped"),
        ("job.status", "cancelled"),
    ]
    assert _step_status(msgs, 0, "cancelled")["data"]["error"] == "Cancelled by user"
    assert final["data"]["error"] == "Cancelled by user"
    hb = next(m for m in msgs if m["type"] == "job.heartbeat")
    assert hb.keys() == {"type", "runId", "jobId", "timestamp"}
    assert not psutil.pid_exists(sleep_pid) or psutil.Process(sleep_pid).status() == psutil.STATUS_ZOMBIE
    assert peer.job_messages(other) == [reject.message]


async def test_next_job_dispatched_on_the_terminal_status_is_accepted_while_the_workspace_is_removed(
    tmp_path: Path, origin: tuple[Path, str, str]
) -> None:
    # An orchestrator dispatches the next job the moment it reads a terminal job.status. The job leaves a
    # work directory of a few thousand files behind, whose removal takes a while: the slot must already be
    # free, so the next job is acknowledged, not rejected busy.
    repo, first, _second = origin
    messy = {"steps": [{"name": "litter", "run": "mkdir -p out && cd out && seq 1 4000 | xargs touch"}]}
    tidy = {"steps": [{"name": "quick", "run": "echo quick"}]}
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)):
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        _run, job_id = await peer.dispatch(job_config=messy, repo_url=str(repo), ref="main", sha=first)
        done = await peer.wait_for(_is_job(job_id, "job.status", state="success"))
        _run2, next_id = await peer.dispatch(job_config=tidy, repo_url=str(repo), ref="main", sha=first)
        answer = await peer.wait_for(lambda m: m.get("jobId") == next_id and m["type"] in ("job.ack", "job.reject"))
        assert answer.message["type"] == "job.ack", answer.message
        await peer.wait_for(_is_job(next_id, "job.status", state="success"))
        later = [r.message for r in peer.received[peer.received.index(done) + 1 :]]
    # The agent.status that follows the terminal status already reports the slot free.
    assert next(m for m in later if m["type"] == "agent.status")["activeJobs"] == 0
    assert list((tmp_path / "work").iterdir()) == []  # both work directories are removed


@pytest.mark.parametrize(
    ("job_timeout", "step_timeout", "error"),
    [(None, 300, "step timed out after 300 ms"), (300, None, "Job timed out after 300 ms")],
)
async def test_step_and_job_timeouts(
    tmp_path: Path, job_timeout: int | None, step_timeout: int | None, error: str
) -> None:
    step: dict[str, Any] = {"name": "slow", "run": "sleep 300"}
    if step_timeout:
        step["timeout"] = step_timeout
    job_config: dict[str, Any] = {"checkout": False, "steps": [step, {"name": "next", "run": "true"}]}
    if job_timeout:
        job_config["timeout"] = job_timeout
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)):
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        _run, job_id = await peer.dispatch(job_config=job_config)
        final = (await peer.wait_for(_is_job(job_id, "job.status", state="failed"))).message
        msgs = peer.job_messages(job_id)
    slow = _step_status(msgs, 0, "failed")
    assert slow["data"]["error"] == error and slow["data"]["signal"] == "SIGTERM"
    assert _step_status(msgs, 1, "skipped")["stepName"] == "next"
    assert final["data"]["error"] == (error if job_timeout else f"Step 'slow' failed: {error}")


async def test_clone_token_goes_in_an_auth_header_only(tmp_path: Path) -> None:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        repo_url = f"http://127.0.0.1:{server.server_address[1]}/acme/widgets.git"
        async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)):
            await peer.wait_for(lambda m: m["type"] == "config.ack")
            _run, job_id = await peer.dispatch(
                job_config={"steps": [{"name": "x", "run": "true"}]},
                repo_url=repo_url,
                ref="main",
                sha="9c1e4b7a",
                token=CLONE_TOKEN,
                sourceAuth={"kind": "basic", "user": "x-access-token", "secret": CLONE_TOKEN},
            )
            final = (await peer.wait_for(_is_job(job_id, "job.status", state="failed"))).message
    finally:
        server.shutdown()
        server.server_close()
    expected = "Basic " + base64.b64encode(f"x-access-token:{CLONE_TOKEN}".encode()).decode()
    assert seen and set(seen) == {expected}
    assert final["data"]["error"].startswith("Checkout failed: clone failed")
    assert CLONE_TOKEN not in repr(peer.received)


async def test_reconnect_reports_in_flight_jobs_and_replays_buffered_messages(tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_config = {
        "checkout": False,
        "env": {"GO": str(go)},
        "steps": [
            {"name": "wait", "run": 'echo first; while [ ! -f "$GO" ]; do sleep 0.05; done; echo second'},
            {"name": "after", "run": "echo after"},
        ],
    }
    async with ScriptedOrchestrator(token=TOKEN) as peer, running_agent(_config(peer, tmp_path)) as agent:
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        run_id, job_id = await peer.dispatch(job_config=job_config)
        await peer.wait_for(lambda m: m.get("jobId") == job_id and "first" in m.get("lines", []))
        release = anyio.Event()
        peer.hold_auth[1] = release
        await peer.drop()
        await peer.wait_for(lambda m: m["type"] == "auth.request", connection=1)
        go.touch()
        with waits.within(15, "the job to end while the agent is not registered", lambda: sorted(agent.runners)):
            await agent.wait_idle()
        release.set()
        register = (await peer.wait_for(lambda m: m["type"] == "agent.register", connection=1)).message
        await peer.wait_for(_is_job(job_id, "job.status", state="success"))
        first_conn = peer.job_messages(job_id, connection=0)
        replayed = peer.job_messages(job_id, connection=1)
        second = [r.message for r in peer.received if r.connection == 1]
    assert register["inFlightJobs"] == [{"jobId": job_id, "runId": run_id}]
    assert _sequence(first_conn) == [
        ("job.ack",),
        ("job.status", "running"),
        ("log.chunk", -1),
        ("step.status", 0, "running"),
        ("log.chunk", 0),
    ]
    assert _sequence(replayed) == [
        ("log.chunk", 0),
        ("step.status", 0, "success"),
        ("step.status", 1, "running"),
        ("log.chunk", 1),
        ("step.status", 1, "success"),
        ("job.status", "success"),
    ]
    assert _lines(replayed, 0) == ["second"]
    kinds = [m["type"] for m in second]
    assert kinds[:4] == ["auth.request", "agent.register", "config.ack", "agent.log"]
    assert second[3]["lines"][0].startswith("--- Orchestrator offline for ")
    ids = [m["messageId"] for m in first_conn + replayed if "messageId" in m]
    assert len(ids) == len(set(ids))  # nothing was sent twice


# --- signals (the agent as a subprocess) -----------------------------------------------------------
@asynccontextmanager
async def agent_process(peer: ScriptedOrchestrator, tmp_path: Path) -> AsyncIterator[Any]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KICI_AGENT_TOKEN": TOKEN, "PYTHONPATH": PROJECT_ROOT}
    async with await anyio.open_process(
        [
            sys.executable,
            "-m",
            "kici_runtime.agent",
            "--url",
            peer.url,
            "--labels",
            "linux",
            "--agent-id",
            "sub-agent",
            "--work-dir",
            str(tmp_path / "work"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()


async def _wait_stderr(proc: Any, needle: str) -> None:
    text = ""
    with waits.within(15, f"{needle!r} on the agent's stderr", lambda: text[-2000:]):
        async for data in proc.stderr:
            text += data.decode(errors="replace")
            if needle in text:
                return
    raise AssertionError(f"{needle!r} never appeared on stderr (it closed):\n{text}")


async def test_sigterm_drains_running_job_then_exits_zero(tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_config = {
        "checkout": False,
        "env": {"GO": str(go)},
        "steps": [{"name": "wait", "run": 'echo first; while [ ! -f "$GO" ]; do sleep 0.05; done; echo done'}],
    }
    async with ScriptedOrchestrator(token=TOKEN) as peer, agent_process(peer, tmp_path) as proc:
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        _run, job_id = await peer.dispatch(job_config=job_config)
        await peer.wait_for(lambda m: m.get("jobId") == job_id and "first" in m.get("lines", []))
        proc.send_signal(signal.SIGTERM)
        await _wait_stderr(proc, "draining")
        _run2, other = await peer.dispatch(job_config=job_config)
        reject = (await peer.wait_for(_is_job(other, "job.reject"))).message
        assert reject["reason"] == "draining"
        go.touch()
        await peer.wait_for(_is_job(job_id, "job.status", state="success"))
        assert await peer.wait_closed(0) == 1000
        with waits.within(15, "the agent process to exit"):
            assert await proc.wait() == 0


async def test_second_sigterm_cancels_running_jobs(tmp_path: Path) -> None:
    job_config = {"checkout": False, "steps": [{"name": "sleep", "run": "echo started; sleep 300"}]}
    async with ScriptedOrchestrator(token=TOKEN) as peer, agent_process(peer, tmp_path) as proc:
        await peer.wait_for(lambda m: m["type"] == "config.ack")
        _run, job_id = await peer.dispatch(job_config=job_config)
        await peer.wait_for(lambda m: m.get("jobId") == job_id and "started" in m.get("lines", []))
        proc.send_signal(signal.SIGTERM)
        await _wait_stderr(proc, "draining")
        proc.send_signal(signal.SIGTERM)
        final = (await peer.wait_for(_is_job(job_id, "job.status", state="cancelled"))).message
        assert final["data"]["error"] == "agent shutting down"
        with waits.within(15, "the agent process to exit"):
            assert await proc.wait() == 0
