"""``make dev``: an orchestrator in independent mode on an embedded PostgreSQL 18, with one local agent.

Everything lives under ``.kici-dev/`` in the current directory: the generated master key and admin token (kept
across runs), the database, payloads, the sample repository copied from ``examples/hello``, the agent's work
directories and the logs. The database's files are in ``.kici-dev/data/postgres``, except when the server's
unprivileged account cannot reach the checkout (running as root in a private directory): they are then in a
private directory under the system temp dir, named in ``.kici-dev/data/postgres/cluster-location`` (see
:mod:`kici_adapters.postgres.embedded`). The launcher prints where. It then prints what to do next: register the
sample repository as a ``local`` source with ``kici-admin`` and send it a signed push webhook with ``curl``.

Stopping. SIGINT (Ctrl-C), SIGTERM or SIGHUP to the launcher stops everything it started, once. Each child runs
in a process group of its own, so a terminal's Ctrl-C reaches the launcher only. The launcher stops the agent
first, while the orchestrator can still take its reports (SIGTERMs at :data:`AGENT_SIGTERMS`: drain, cancel
running jobs, kill their processes), then the orchestrator (SIGTERM when the agent is gone or at
:data:`ORCHESTRATOR_BY` at the latest; it stops its processing child and the database; a second one after
:data:`ORCHESTRATOR_AGAIN_AFTER` closes open connections), and SIGKILLs the process groups of whatever still
runs at :data:`KILL_AFTER` seconds, stopping the database itself when its owner had to be killed. On Linux the children
also get SIGTERM when the
launcher dies without that chance. ``make dev`` passes SIGTERM on to the launcher but not a SIGINT or SIGHUP
sent to make alone; the launcher notices those too (see :func:`_make_watch`).

One at a time. The launcher holds ``.kici-dev/launcher.lock`` while it runs. It refuses to start, with one line
and before touching anything, when another launcher runs on the same directory, when another process owns the
database, or when the port is taken; and it reports "running" only once its own orchestrator has announced the
port and answers ``/health``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO

import click

from kici_adapters.postgres import embedded
from kici_core.errors import KiciError

DEV_ORG = "dev"
SOURCE_NAME = "hello"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
AGENT_SIGTERMS = (0.0, 1.5, 3.5)
"""Seconds after the stop began when the agent gets a SIGTERM: it drains (a running job may finish), then cancels
running jobs (their steps get SIGTERM), then kills their processes at once."""
ORCHESTRATOR_BY = 5.0
"""The orchestrator gets its SIGTERM once the agent has exited (so that the agent can report its jobs), and at the
latest this many seconds after the stop began."""
ORCHESTRATOR_AGAIN_AFTER = 2.5
"""Seconds after its first SIGTERM when a still running orchestrator gets a second one: it closes open HTTP
connections instead of waiting for them."""
KILL_AFTER = 8.5
"""Seconds after the first SIGTERM when children still running are killed with their process groups."""
START_TIMEOUT = 120.0
_POLL = 0.2
_PR_SET_PDEATHSIG = 1


def _state(root: Path) -> dict[str, str]:
    path = root / "state.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    data = {
        "secretKey": secrets.token_hex(32),
        "adminToken": secrets.token_hex(32),
        "webhookSecret": secrets.token_hex(16),
    }
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    path.chmod(0o600)
    return data


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "KiCI dev",
        "GIT_AUTHOR_EMAIL": "dev@kici.invalid",
        "GIT_COMMITTER_NAME": "KiCI dev",
        "GIT_COMMITTER_EMAIL": "dev@kici.invalid",
    }
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)
    return out.stdout.strip()


def sample_repo(root: Path, examples: Path) -> tuple[Path, str]:
    """Copy the sample repository into ``root/hello-repo`` as a git repo on ``main``; returns (path, HEAD sha)."""
    repo = root / "hello-repo"
    if not (repo / ".git").exists():
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(examples / "hello", repo)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "Sample repository for KiCI")
    return repo, _git(repo, "rev-parse", "HEAD")


def push_payload(repo: Path, sha: str) -> bytes:
    payload = {
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": sha,
        "repository": {
            "full_name": "example/hello",
            "name": "hello",
            "default_branch": "main",
            "clone_url": repo.resolve().as_uri(),
        },
        "sender": {"login": "dev", "id": 1},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def _signal_mask(status: str, field: str) -> int:
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.strip(), 16)
    raise ValueError(f"no {field} in /proc status")


def _make_watch() -> Callable[[], int | None]:
    """Tell when the parent ``make`` was sent SIGINT or SIGHUP on its own (Linux).

    GNU make passes SIGTERM on to the job it runs, but not SIGINT or SIGHUP: for those it assumes a terminal
    signalled the whole process group, and waits for its job to end. It does drop its handler of the signal
    it received, which ``/proc/<make>/status`` shows. The returned function answers that signal, or None.
    """
    parent = Path(f"/proc/{os.getppid()}")
    try:
        if (parent / "comm").read_text().strip() not in ("make", "gmake"):
            return lambda: None
        caught = _signal_mask((parent / "status").read_text(), "SigCgt")
    except (OSError, ValueError):
        return lambda: None
    watched = [signum for signum in (signal.SIGINT, signal.SIGHUP) if caught & (1 << (signum - 1))]

    def check() -> int | None:
        try:
            now = _signal_mask((parent / "status").read_text(), "SigCgt")
        except (OSError, ValueError):  # make is gone
            return None
        return next((int(signum) for signum in watched if not now & (1 << (signum - 1))), None)

    return check


class _Signals:
    """Records the first stop signal. The handlers only set a field, so that no exception ever lands in the
    middle of starting or stopping a child; the launcher's loops look at it every :data:`_POLL` seconds (and
    then also at the parent ``make``: see :func:`_make_watch`)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._make = _make_watch()

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop signal has arrived."""
        deadline = time.monotonic() + seconds
        while self.received is None:
            if (via_make := self._make()) is not None:
                self.received = via_make
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        return self.received is not None


def _port_taken(port: int) -> bool:
    """True when something listens on (or holds) 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no owner
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _die_with_launcher(launcher: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the launcher dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != launcher:  # died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class _Log:
    """The part of a log file written since the launcher opened it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[bytes] = path.open("ab")
        self._offset = self.handle.tell()
        self._text = ""

    def new_text(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            self._text = f.read().decode(errors="replace")
        return self._text

    def last_error(self, program: str) -> str:
        """The program's own one-line error (``<program>: ...``), else the last line, else a pointer to the file."""
        lines = [line for line in self.new_text().splitlines() if line.strip()]
        mine = [line for line in lines if line.startswith(f"{program}: ")]
        if mine:
            return mine[-1]
        return lines[-1] if lines else f"see {self.path}"


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait_ready(base: str, port: int, orch: subprocess.Popen[bytes], log: _Log, signals: _Signals) -> bool:
    """Wait until our own orchestrator announced ``port`` and answers ``/health``; False when a signal came first.

    The announcement rules out another process answering on the port.
    """
    deadline = time.monotonic() + START_TIMEOUT
    announced = f"started on port {port}"
    while not signals.wait(_POLL):
        if orch.poll() is not None:
            raise click.ClickException(
                f"kici-standalone exited with status {orch.returncode}: {log.last_error('kici-standalone')}"
            )
        if announced in log.new_text() and _healthy(base):
            return True
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"kici-standalone did not announce port {port} and answer {base}/health within "
                f"{START_TIMEOUT:.0f} s; see {log.path}"
            )
    return False


def _signal_on_schedule(proc: subprocess.Popen[bytes], at: list[float], started: float, until: float) -> None:
    """Send SIGTERM to ``proc`` at each of the ``at`` seconds after ``started`` while it runs, until it exits or
    ``until`` seconds have passed."""
    pending = sorted(at)
    while proc.poll() is None and time.monotonic() - started < until:
        if pending and time.monotonic() - started >= pending[0]:
            pending.pop(0)
            proc.send_signal(signal.SIGTERM)
        time.sleep(_POLL)


def _stop(children: list[tuple[str, subprocess.Popen[bytes]]], pg_dir: Path) -> list[str]:
    """Stop every child (see the module docstring); return the names of those that had to be killed."""
    started = time.monotonic()
    by_name = dict(children)
    if (agent := by_name.get("agent")) is not None:
        _signal_on_schedule(agent, list(AGENT_SIGTERMS), started, ORCHESTRATOR_BY)
    orchestrator = by_name["orchestrator"]
    first = time.monotonic() - started
    _signal_on_schedule(orchestrator, [first, first + ORCHESTRATOR_AGAIN_AFTER], started, KILL_AFTER)
    killed = [name for name, proc in children if proc.poll() is None]
    for _, proc in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # also whatever the child started in its group
        proc.wait()
    # A database whose owner was killed (here or earlier) is stopped by us; one owned by a live process is not.
    try:
        embedded.EmbeddedPostgres(pg_dir).stop_if_abandoned()
    except (KiciError, subprocess.SubprocessError) as exc:
        click.echo(f"could not stop the database in {pg_dir}: {exc}", err=True)
    return killed


@click.command()
@click.option("--port", default=4000, show_default=True, help="Port of the orchestrator.")
@click.option("--dir", "dev_dir", default=".kici-dev", show_default=True, help="Where dev state is kept.")
@click.option("--examples", default="examples", show_default=True, help="Folder holding the sample repository.")
def main(port: int, dev_dir: str, examples: str) -> None:
    """Start kici-standalone (embedded PostgreSQL 18) and one kici-agent, then print the next steps.

    SIGINT (Ctrl-C), SIGTERM or SIGHUP stops everything it started.
    """
    signals = _Signals()
    signals.install()
    root = Path(dev_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    launcher = embedded.PidLock(root / "launcher.lock")
    holder = launcher.try_acquire()
    if holder is not None:
        raise click.ClickException(f"make dev is already running on {root} (pid {holder or 'unknown'}); stop it first")
    pg_dir = root / "data" / "postgres"
    owner = embedded.owner_pid(pg_dir)
    if owner is not None:
        raise click.ClickException(
            f"the dev database in {pg_dir} is in use by another process (pid {owner or 'unknown'}); stop it first"
        )
    if _port_taken(port):
        raise click.ClickException(
            f"port {port} on 127.0.0.1 is already in use; stop what listens there, or run make dev PORT=<free port>"
        )
    state = _state(root)
    repo, sha = sample_repo(root, Path(examples).resolve())
    body = push_payload(repo, sha)
    (root / "push.json").write_bytes(body)
    signature = "sha256=" + hmac.new(state["webhookSecret"].encode(), body, hashlib.sha256).hexdigest()
    base = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    orch_env = {
        **clean,
        "KICI_MODE": "independent",
        "KICI_DEV": "true",
        "KICI_DATABASE_URL": "embedded",
        "KICI_DATA_DIR": str(root / "data"),
        "KICI_PORT": str(port),
        "KICI_HOST": "127.0.0.1",
        "KICI_SECRET_KEY": state["secretKey"],
        "KICI_BOOTSTRAP_ADMIN_TOKEN": state["adminToken"],
        "KICI_AGENT_AUTH": "none",
        "KICI_LOG_LEVEL": "info",
    }
    pg_dir.mkdir(parents=True, exist_ok=True)
    cluster = embedded.EmbeddedPostgres(pg_dir).cluster_dir
    if signals.received is not None:  # stopped before anything started
        launcher.release()
        return
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    orch_log = _Log(logs / "orchestrator.log")
    agent_log = _Log(logs / "agent.log")
    preexec = _die_with_launcher(os.getpid())
    children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(name: str, module: str, env: dict[str, str], log: _Log) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log.handle,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=preexec,
        )
        children.append((name, proc))
        return proc

    try:
        click.echo(f"Starting kici-standalone on {base} (embedded PostgreSQL 18 in {cluster}) ...")
        orch = spawn("orchestrator", "kici_runtime.orchestrator.standalone", orch_env, orch_log)
        if _wait_ready(base, port, orch, orch_log, signals):
            agent_env = {
                **clean,
                "KICI_ORCHESTRATOR_URL": f"ws://127.0.0.1:{port}/ws",
                "KICI_AGENT_ID": "dev-agent",
                "KICI_AGENT_LABELS": "local",
                "KICI_AGENT_WORK_DIR": str(root / "agent-work"),
            }
            spawn("agent", "kici_runtime.agent", agent_env, agent_log)
            _announce(base, logs, state, repo, root, signature, cluster)
            while not signals.wait(_POLL):
                exited = [(name, proc.returncode) for name, proc in children if proc.poll() is not None]
                if exited:
                    name, code = exited[0]
                    raise click.ClickException(f"the {name} exited with status {code}; see the logs under {logs}")
    finally:
        if children:
            why = f" ({signals.name})" if signals.received is not None else ""
            click.echo(f"\nStopping{why} ...")
            killed = _stop(children, pg_dir)
            click.echo(f"Stopped (killed: {', '.join(killed)})." if killed else "Stopped.")
        orch_log.handle.close()
        agent_log.handle.close()
        launcher.release()


def _announce(
    base: str, logs: Path, state: dict[str, str], repo: Path, root: Path, signature: str, cluster: Path
) -> None:
    admin = f"{Path(sys.executable).parent / 'kici-admin'} --url {base} --token {state['adminToken']}"
    click.echo(f"""
KiCI is running in independent mode.
  orchestrator  {base}   (logs: {logs / "orchestrator.log"})
  agent         dev-agent, labels: local   (logs: {logs / "agent.log"})
  database      embedded PostgreSQL 18 in {cluster}
  admin token   {state["adminToken"]}

1. Register the sample repository as a local webhook source:

   {admin} source add generic --org {DEV_ORG} --name {SOURCE_NAME} --provider-type local \\
       --local-repo {repo} --verification hmac_sha256 --secret {state["webhookSecret"]}

2. Send it a signed push webhook:

   curl -sS -X POST {base}/webhook/{DEV_ORG}/generic/{SOURCE_NAME} \\
       -H 'content-type: application/json' -H 'x-event-type: push' \\
       -H 'x-signature-256: {signature}' --data-binary @{root / "push.json"}

3. Watch the run:

   {admin} runs list
   {admin} runs logs <runId> --follow
   {admin} event-log list

   or in the browser: {base}/dashboard/ (sign in with the admin token above)

Press Ctrl-C to stop (or send SIGTERM or SIGHUP): the orchestrator, the agent and the database stop together.
""")


if __name__ == "__main__":
    main()
