"""``make dev`` and ``kici-standalone`` on an embedded PostgreSQL stop what they started, always.

The dev launcher (``python -m kici_runtime.orchestrator.devserver``, what ``make dev`` runs) is started with the real
programs and a real embedded PostgreSQL 18, in a session of its own like a terminal job, in a directory under
pytest's temp dir (private to its user: when the tests run as root, the database's unprivileged account cannot
enter it, as in a checkout under ``/root``). Real signals stop it: SIGINT to its process group (a terminal's
Ctrl-C), SIGTERM or SIGHUP to the launcher alone (an IDE's stop button, ``timeout``, a closed terminal). Every
process it started, the database's included, must be gone and its port free within 10 s.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from kici_adapters.postgres.embedded import EmbeddedPostgres
from tests.support.orchestrator import BIN, OrchestratorProcess, clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]
START_BOUND = 180.0  # first start: initdb, migrations, then the agent
STOP_BOUND = 10.0  # the requirement: everything gone within 10 s of the signal
DATABASE_LINE = re.compile(r"^\s*database\s+embedded PostgreSQL 18 in (\S+)\s*$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _wait(condition: Callable[[], bool], bound: float, what: str, seen: Callable[[], str]) -> None:
    """Poll ``condition`` until true; on timeout say what was awaited and what was seen."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {bound} s; seen: {seen()}")
        time.sleep(0.05)  # polling interval of a bounded wait


def _postmaster(cluster: Path) -> psutil.Process | None:
    try:
        first = (cluster / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    try:
        return psutil.Process(int(first))
    except (ValueError, psutil.NoSuchProcess):
        return None


def _cluster_port(cluster: Path) -> int:
    ports = re.findall(r"^port = (\d+)", (cluster / "pgdata" / "postgresql.conf").read_text(), re.M)
    return int(ports[-1])


def _cluster_url(cluster: Path) -> str:
    """The superuser URL of the database whose files are in ``cluster`` (the password is kept there)."""
    password = (cluster / "superuser.password").read_text().strip()
    return f"postgresql://postgres:{password}@127.0.0.1:{_cluster_port(cluster)}/postgres"


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.ZombieProcess:
        return f"(zombie, parent {proc.ppid()})"
    except psutil.NoSuchProcess:
        return "(gone)"


def _describe(procs: list[psutil.Process]) -> str:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{p.pid} {_cmdline(p)[:120]}")
        except psutil.NoSuchProcess:
            pass
    return "; ".join(alive) or "(none alive)"


def _all_gone(procs: list[psutil.Process]) -> bool:
    return _describe(procs) == "(none alive)"


def _as_from_a_terminal() -> None:
    """Start the launcher (or make) with the stop signals at their defaults, as a terminal or an IDE does: a
    test run started in the background of a non-interactive shell ignores SIGINT, which make would inherit and
    keep ignoring."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@dataclass
class DevLoop:
    """One ``make dev`` launcher run as a subprocess in a session of its own (``via_make``: through ``make dev``
    in this checkout, with this test's virtualenv)."""

    dev_dir: Path
    port: int
    via_make: bool = False
    examples: Path = REPO_ROOT / "examples"
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _pump_thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> DevLoop:
        if self.via_make:
            make = shutil.which("make")
            assert make is not None, "make is not installed"
            command = [
                make,
                "-s",
                "-o",
                f"{sys.prefix}/.installed",
                "dev",
                f"VENV={sys.prefix}",
                f"PORT={self.port}",
                f"DEV_DIR={self.dev_dir}",
            ]
        else:
            command = [
                sys.executable,
                "-m",
                "kici_runtime.orchestrator.devserver",
                "--port",
                str(self.port),
                "--dir",
                str(self.dev_dir),
                "--examples",
                str(self.examples),
            ]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT if self.via_make else self.dev_dir.parent,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=_as_from_a_terminal,
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        _wait(
            lambda: self.has("Press Ctrl-C to stop") or self.proc is None or self.proc.poll() is not None,
            START_BOUND,
            "the launcher printing that KiCI is running",
            self.output,
        )
        assert self.has("Press Ctrl-C to stop"), f"the launcher exited:\n{self.output()}"
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-60:])

    def has(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self.lines)

    @property
    def cluster(self) -> Path:
        with self._lock:
            found = [m.group(1) for line in self.lines if (m := DATABASE_LINE.match(line))]
        assert found, f"the launcher did not say where the database lives:\n{self.output()}"
        return Path(found[-1])

    def processes(self) -> list[psutil.Process]:
        """The launcher, everything below it, and the database server with its own processes."""
        assert self.proc is not None
        launcher = psutil.Process(self.proc.pid)
        procs = [launcher, *launcher.children(recursive=True)]
        postmaster = _postmaster(self.cluster)
        assert postmaster is not None, f"no database server running in {self.cluster}"
        procs += [postmaster, *postmaster.children(recursive=True)]
        names = " ".join(_cmdline(p) for p in procs)
        for program in (
            "kici_runtime.orchestrator.devserver",
            "kici_runtime.orchestrator.standalone",
            "kici_runtime.orchestrator.processing",
            "kici_runtime.agent",
        ):
            assert program in names, f"{program} is not running: {names}"
        return procs

    def stop_with(self, send: Callable[[int], None], *, exit_code: int = 0) -> None:
        """Send a signal (``send(pid of the launcher, or of make)``) and check that everything stops, once,
        within 10 s."""
        assert self.proc is not None
        procs = self.processes()
        send(self.proc.pid)
        _wait(
            lambda: _all_gone(procs) and not _port_taken(self.port),
            STOP_BOUND,
            "every process of make dev gone and its port free",
            lambda: f"alive: {_describe(procs)}; port {self.port} taken: {_port_taken(self.port)}\n{self.output()}",
        )
        assert self.proc.wait(STOP_BOUND) == exit_code, self.output()
        self._join()
        assert self.has("Stopped."), self.output()
        assert not self.has("killed:"), f"a child had to be killed:\n{self.output()}"
        assert self.output().count("Stopping") == 1, self.output()

    def _join(self) -> None:
        if self._pump_thread is not None:
            self._pump_thread.join(STOP_BOUND)
            self._pump_thread = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_BOUND)
        self._join()


def _discard_database(data_dir: Path) -> None:
    """Stop a database a failed test left behind, the way the launcher does, and remove a relocated cluster."""
    if data_dir.is_dir():
        server = EmbeddedPostgres(data_dir)
        server.stop_if_abandoned()
        if server.cluster_dir != server.data_dir:
            shutil.rmtree(server.cluster_dir, ignore_errors=True)


@pytest.fixture
def dev_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "checkout" / ".kici-dev"
    path.parent.mkdir()
    yield path
    _discard_database(path / "data" / "postgres")


def _launch(dev_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kici_runtime.orchestrator.devserver",
            "--port",
            str(port),
            "--dir",
            str(dev_dir),
            "--examples",
            str(REPO_ROOT / "examples"),
        ],
        cwd=dev_dir.parent,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_BOUND,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {lines}"
    return lines[0]


def test_ctrl_c_stops_everything_and_a_second_launcher_touches_nothing(dev_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    dev = DevLoop(dev_dir, port)
    try:
        dev.start()
        cluster = dev.cluster
        if os.geteuid() == 0:  # the database's account cannot enter pytest's private temp dir: relocated
            assert not cluster.is_relative_to(tmp_path)
            assert (dev_dir / "data" / "postgres" / "cluster-location").read_text().strip() == str(cluster)
            assert oct(cluster.stat().st_mode & 0o777) == "0o700"
        assert oct(tmp_path.stat().st_mode & 0o777) == "0o700", "the user's own directory was changed"
        kept = ["state.json", "push.json", "launcher.lock", "data/postgres/owner.lock"]
        before = {name: (dev_dir / name).stat().st_mtime_ns for name in kept}

        again = _one_line_error(_launch(dev_dir, _free_port()))
        assert f"already running on {dev_dir} (pid {dev.proc.pid if dev.proc else 0})" in again, again

        other_dir = tmp_path / "other" / ".kici-dev"
        other_dir.parent.mkdir()
        busy = _one_line_error(_launch(other_dir, port))
        assert f"port {port} on 127.0.0.1 is already in use" in busy, busy
        assert not (other_dir / "state.json").exists() and not (other_dir / "data").exists()

        assert {name: (dev_dir / name).stat().st_mtime_ns for name in kept} == before, "the refused launcher wrote"
        with psycopg.connect(_cluster_url(cluster)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        dev.stop_with(lambda pid: os.killpg(pid, signal.SIGINT))
    finally:
        dev.kill()


def test_sigterm_sighup_and_make_stop_everything_and_the_data_is_kept(dev_dir: Path) -> None:
    port = _free_port()
    dev = DevLoop(dev_dir, port)
    try:
        dev.start()
        cluster = dev.cluster
        with psycopg.connect(_cluster_url(cluster), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept_across_restarts (v text)")
            conn.execute("INSERT INTO kept_across_restarts VALUES ('first run')")
        dev.stop_with(lambda pid: os.kill(pid, signal.SIGTERM))

        dev = DevLoop(dev_dir, port).start()
        assert dev.cluster == cluster
        with psycopg.connect(_cluster_url(cluster)) as conn:
            assert conn.execute("SELECT v FROM kept_across_restarts").fetchall() == [("first run",)]
        dev.stop_with(lambda pid: os.kill(pid, signal.SIGHUP))

        # make passes SIGTERM on, but not a SIGINT sent to make alone (an IDE's stop button may do that)
        dev = DevLoop(dev_dir, port, via_make=True).start()
        dev.stop_with(lambda pid: os.kill(pid, signal.SIGINT), exit_code=-signal.SIGINT)
    finally:
        dev.kill()


STUBBORN_JOB = {
    "schemaVersion": 29,
    "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
    "contentHash": "dev-loop-stubborn-0001",
    "workflows": [
        {
            "name": "stubborn",
            "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
            "contentHash": "dev-loop-stubborn-workflow-0001",
            "compileSchemaVersion": 5,
            "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
            "jobs": [
                {
                    "_type": "static",
                    "name": "ignores-sigterm",
                    "runsOn": [{"kind": "exact", "value": "local"}],
                    "runsOnPick": "deterministic",
                    "needs": [],
                    "steps": [{"name": "long", "run": "trap '' TERM; sleep 600"}],
                }
            ],
        }
    ],
}


def test_ctrl_c_while_a_job_ignores_sigterm_leaves_no_job_process_behind(dev_dir: Path, tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    (examples / "hello" / ".kici").mkdir(parents=True)
    (examples / "hello" / ".kici" / "kici.lock.json").write_text(json.dumps(STUBBORN_JOB))
    port = _free_port()
    dev = DevLoop(dev_dir, port, examples=examples)
    try:
        dev.start()
        state = json.loads((dev_dir / "state.json").read_text())
        base = f"http://127.0.0.1:{port}"
        added = subprocess.run(
            [
                str(BIN / "kici-admin"),
                "--url",
                base,
                "--token",
                state["adminToken"],
                "source",
                "add",
                "generic",
                "--org",
                "dev",
                "--name",
                "hello",
                "--provider-type",
                "local",
                "--local-repo",
                str(dev_dir / "hello-repo"),
                "--verification",
                "hmac_sha256",
                "--secret",
                state["webhookSecret"],
            ],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=START_BOUND,
        )
        assert added.returncode == 0, added.stdout + added.stderr
        body = (dev_dir / "push.json").read_bytes()
        signature = "sha256=" + hmac.new(state["webhookSecret"].encode(), body, hashlib.sha256).hexdigest()
        answer = httpx.post(
            f"{base}/webhook/dev/generic/hello",
            content=body,
            timeout=30,
            headers={
                "content-type": "application/json",
                "x-event-type": "push",
                "x-signature-256": signature,
            },
        )
        assert answer.status_code == 202 and answer.json().get("accepted"), answer.text

        assert dev.proc is not None
        launcher = psutil.Process(dev.proc.pid)

        def job_running() -> bool:
            return any("sleep 600" in _cmdline(p) for p in launcher.children(recursive=True))

        _wait(
            job_running,
            START_BOUND,
            "the job's step (sleep 600) running under the agent",
            lambda: dev.output() + "\n" + (dev_dir / "logs" / "agent.log").read_text()[-2000:],
        )
        dev.stop_with(lambda pid: os.killpg(pid, signal.SIGINT))
    finally:
        dev.kill()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_port_another_program_answers_health_on_is_refused_before_anything_starts(tmp_path: Path) -> None:
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        port = impostor.server_address[1]
        dev_dir = tmp_path / "checkout" / ".kici-dev"
        dev_dir.parent.mkdir()
        line = _one_line_error(_launch(dev_dir, int(port)))
        assert f"port {port} on 127.0.0.1 is already in use" in line, line
        assert not (dev_dir / "data").exists(), "the launcher started something"
    finally:
        impostor.shutdown()
        impostor.server_close()


# ------------------------------------------------------------------------------------------ kici-standalone
def _standalone_env(data_dir: Path) -> dict[str, str]:
    return clean_env(
        KICI_MODE="independent",
        KICI_DATABASE_URL="embedded",
        KICI_DATA_DIR=str(data_dir),
        KICI_SECRET_KEY="ab" * 32,
        KICI_BOOTSTRAP_ADMIN_TOKEN="kat-admin-" + "7" * 30,
        KICI_LOG_LEVEL="info",
    )


def test_a_second_standalone_on_the_same_data_refuses_and_two_signals_still_stop_the_database(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = OrchestratorProcess("kici-standalone", _standalone_env(data_dir)).start(bound=START_BOUND)
    try:
        cluster = EmbeddedPostgres(data_dir / "postgres").cluster_dir
        postmaster = _postmaster(cluster)
        assert postmaster is not None, first.tail()
        assert first.proc is not None

        second = subprocess.run(
            [str(BIN / "kici-standalone")],
            env={**_standalone_env(data_dir), "KICI_PORT": "0"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_BOUND,
        )
        assert second.returncode != 0
        refusal = [line for line in second.stderr.splitlines() if line.startswith("kici-standalone: ")]
        assert len(refusal) == 1 and f"in use by another running process (pid {first.proc.pid})" in refusal[0], (
            second.stderr
        )
        assert "started" not in second.stdout + second.stderr.replace(refusal[0], "")
        assert postmaster.is_running(), "the second instance stopped the first one's database"
        with psycopg.connect(_cluster_url(cluster)) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        # A terminal's Ctrl-C and a parent's SIGTERM on top of it: the second signal must not skip the clean-up.
        procs = [
            psutil.Process(first.proc.pid),
            *psutil.Process(first.proc.pid).children(recursive=True),
            postmaster,
            *postmaster.children(recursive=True),
        ]
        first.proc.send_signal(signal.SIGINT)
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(STOP_BOUND) == 0, first.tail()
        _wait(
            lambda: _all_gone(procs),
            STOP_BOUND,
            "the orchestrator, its children and its database gone",
            lambda: _describe(procs),
        )
        assert first.log_count("Embedded PostgreSQL stopped") == 1, first.tail()
    finally:
        first.kill()
        _discard_database(data_dir / "postgres")
