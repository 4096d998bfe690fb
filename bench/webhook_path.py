"""The path of one webhook through our code, from the HTTP request to the agent's ``job.dispatch``.

Counts how many of our functions (modules under ``kici_core``, ``kici_adapters`` and ``kici_runtime``) one signed
generic ``push`` webhook passes on its way to ``job.dispatch``, how many calls that takes, how many asynchronous
hand-offs (asyncio tasks or threads that take the work over) and how many crossings between the three layers.

How it measures. It starts ``kici-standalone`` (independent mode, embedded PostgreSQL in a temp dir, deliveries
processed in the serving process: ``KICI_PROCESSING_WORKERS=0``) in a child Python process that this script
bootstraps (``webhook_path.py --child kici-standalone``): the bootstrap looks the program up by its console-script
entry point and, between SIGUSR1 and SIGUSR2, records every call of one of our functions with a profile hook
(``sys.setprofile``, ``threading.setprofile``): the function, the nearest calling function of ours, and the asyncio
task (or thread) that ran it. Nothing is imported from our packages by name, so the numbers stay comparable when
modules move. The parent registers a ``local`` source with ``kici-admin``, connects one agent over the WebSocket
protocol, and warms up with two webhooks end to end (lazy imports, pools, caches). Then, ``--rounds`` times:

1. an idle window of ``--idle`` seconds without any webhook (what the background loops do on their own). It is
   longer than the orchestrator's short read caches (source lookups, decrypted secrets: 2 s), so every measured
   webhook takes the same path: that of a webhook arriving after a pause, source lookup and decryption included;
2. a measured window: it commits to the repository (every push is a new commit), starts recording, sends one
   webhook, stops recording once the agent has the ``job.dispatch``, then completes the job and waits until the
   run has succeeded.

Attribution. A task created during a measured window counts with all its calls. A task that also ran in the idle
windows (a long-lived loop: the delivery worker, the dispatch driver) counts only with the calls beyond its idle
rate, so its own polling is left out. The path is the functions counted in every measured window (a background
tick that happens to fall into one window is not); calls, hand-offs and crossings are medians over the windows.

* functions: distinct ``module:qualname`` of our code on the path (comprehension frames and module bodies left out);
* calls: calls of those functions (a coroutine counts once, not at every resumption);
* contexts: asyncio tasks, threads and event-loop callbacks (outside any task) that ran path functions; a context
  carries the delivery when it runs a path function no other context runs (the others, such as a connection
  pool's return callback, only repeat what a carrying context does); hand-offs = carrying contexts - 1. Side
  branches the delivery sets off within the window (the payload copy to the blob store) count too;
* crossings: calls whose nearest calling function of ours is in another layer (core/adapters/runtime), per call
  and as distinct (caller, callee) edges.

It prints a table, the path (functions in the order of their first call, with layer, calls and context), the
contexts and the crossing edges; ``--json`` prints the same as JSON. About 20 s on a small machine.

Usage: python bench/webhook_path.py [--rounds N] [--idle SECONDS] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded by file path

from webhook_path_recorder import MARK, run_program
from webhook_path_recorder import Recorder as Recorder
from webhook_path_report import Window, print_report, report

ORG = "bench"
SOURCE = "webhook-path"
LABEL = "webhook-path"
SECRET = "webhook-path-secret"
BOUND = 60.0


# ============================================================================================ the parent side
def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@example.com",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def make_repo(root: Path) -> Path:
    """A git repository whose lock file runs one job on label ``webhook-path`` for every push to ``main``."""
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    src = {"file": ".kici/workflows/ci.ts", "export": "#default"}
    lock = {
        "schemaVersion": 29,
        "source": src,
        "contentHash": "path",
        "workflows": [
            {
                "name": "path",
                "source": src,
                "contentHash": "path",
                "compileSchemaVersion": 5,
                "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
                "jobs": [
                    {
                        "_type": "static",
                        "name": "job",
                        "runsOn": [{"kind": "exact", "value": LABEL}],
                        "needs": [],
                        "steps": [{"name": "step", "run": "true"}],
                    }
                ],
            }
        ],
    }
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    _git(root, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "path")
    return repo


def commit(repo: Path) -> str:
    """A new commit on ``main`` (every push brings one); returns its sha."""
    _git(repo, "commit", "-q", "--allow-empty", "-m", f"push {uuid.uuid4().hex[:8]}")
    return _git(repo, "rev-parse", "HEAD")


def webhook(repo: Path, sha: str) -> tuple[bytes, dict[str, str]]:
    """A signed generic ``push`` of ``sha`` to ``main``."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": sha,
            "repository": {
                "full_name": "bench/repo",
                "name": "repo",
                "default_branch": "main",
                "clone_url": repo.as_uri(),
            },
            "sender": {"login": "bench", "id": 1},
        }
    ).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-Signature-256": sig,
        "X-Delivery-Id": str(uuid.uuid4()),
        "X-Event-Type": "push",
    }


def _self(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


class Child:
    """The orchestrator in a child process under the recording bootstrap; its output is kept in :attr:`lines`."""

    def __init__(self, env: dict[str, str], record_to: Path) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self.proc = subprocess.Popen(
            _self("--child", str(record_to), "kici-standalone"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_line(self, text: str, *, exact: bool = False, bound: float = BOUND) -> str:
        """The first output line containing ``text`` (being ``text`` when ``exact``); raises when the child's
        output ends or ``bound`` passes first."""
        deadline = time.monotonic() + bound
        with self._changed:
            while True:
                hit = next((line for line in self.lines if (line == text if exact else text in line)), None)
                if hit is not None:
                    return hit
                if self._ended:
                    self.proc.wait(BOUND)
                    raise RuntimeError(
                        f"kici-standalone exited ({self.proc.returncode}) before {text!r}:\n" + self.tail()
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no {text!r} from kici-standalone within {bound} s:\n" + self.tail())
                self._changed.wait(0.5)

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def measure(rounds: int, idle_seconds: float, root: Path, quiet: bool) -> dict[str, Any]:
    import anyio
    import httpx
    from websockets.asyncio.client import connect

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    repo = make_repo(root)
    dumps = root / "windows"
    dumps.mkdir()
    admin_token = "kat-webhook-path-" + secrets.token_hex(16)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env = {
        **clean,
        "KICI_MODE": "independent",
        "KICI_DEV": "true",
        "KICI_DATABASE_URL": "embedded",
        "KICI_DATA_DIR": str(root / "data"),
        "KICI_PORT": "0",
        "KICI_HOST": "127.0.0.1",
        "KICI_SECRET_KEY": secrets.token_hex(32),
        "KICI_BOOTSTRAP_ADMIN_TOKEN": admin_token,
        "KICI_AGENT_AUTH": "none",
        "KICI_PROCESSING_WORKERS": "0",
        "KICI_LOG_LEVEL": "info",
    }
    say("starting kici-standalone (embedded PostgreSQL) ...")
    child = Child(env, dumps)
    try:
        line = await anyio.to_thread.run_sync(child.wait_line, "started on port")
        port = int(re.findall(r"started on port (\d+)", line)[0])
        base = f"http://127.0.0.1:{port}"
        admin = await anyio.run_process(
            _self(
                "--run",
                "kici-admin",
                "--url",
                base,
                "source",
                "add",
                "generic",
                "--org",
                ORG,
                "--name",
                SOURCE,
                "--provider-type",
                "local",
                "--local-repo",
                str(repo),
                "--verification",
                "hmac_sha256",
                "--secret",
                SECRET,
                "--event-type-header",
                "x-event-type",
                "--idempotency-key-header",
                "x-delivery-id",
                "--rate-limit",
                "100000",
            ),
            env={**clean, "KICI_ADMIN_TOKEN": admin_token},
            check=False,
        )
        if admin.returncode != 0:
            raise RuntimeError(f"kici-admin source add failed: {admin.stdout.decode()}{admin.stderr.decode()}")
        async with (
            httpx.AsyncClient(base_url=base, timeout=BOUND, headers={"Authorization": f"Bearer {admin_token}"}) as http,
            connect(f"ws://127.0.0.1:{port}/ws", open_timeout=BOUND) as ws,
        ):

            async def send(msg: dict[str, Any]) -> None:
                await ws.send(json.dumps({"messageId": str(uuid.uuid4()), "timestamp": int(time.time() * 1000), **msg}))

            async def expect(kind: str) -> dict[str, Any]:
                seen: list[str] = []
                with anyio.move_on_after(BOUND) as scope:
                    while True:
                        msg: dict[str, Any] = json.loads(await ws.recv())
                        if msg.get("type") == kind:
                            return msg
                        seen.append(str(msg.get("type")))
                if scope.cancelled_caught:
                    raise RuntimeError(f"no {kind} within {BOUND} s; the agent saw {seen[-10:]}:\n{child.tail()}")
                raise AssertionError("unreachable")

            await send(
                {
                    "type": "agent.register",
                    "agentId": "path-agent",
                    "labels": [LABEL],
                    "maxConcurrency": 1,
                    "platform": "linux",
                    "arch": "x64",
                    "inFlightJobs": [],
                }
            )
            await expect("register.ack")

            async def push() -> dict[str, Any]:
                body, headers = webhook(repo, commit(repo))
                r = await http.post(f"/webhook/{ORG}/generic/{SOURCE}", content=body, headers=headers)
                if r.status_code not in (200, 202):
                    raise RuntimeError(f"webhook answered {r.status_code}: {r.text[:300]}")
                return await expect("job.dispatch")

            async def finish(dispatch: dict[str, Any]) -> None:
                ids = {"runId": dispatch["runId"], "jobId": dispatch["jobId"]}
                await send({"type": "job.ack", **ids})
                await send({"type": "job.status", "state": "running", **ids})
                await send({"type": "job.status", "state": "success", "data": {"exitCode": 0}, **ids})
                deadline = time.monotonic() + BOUND
                status = ""
                while time.monotonic() < deadline:  # a benchmark may poll
                    r = await http.get(f"/api/v1/admin/runs/{dispatch['runId']}")
                    status = r.json().get("status", "") if r.status_code == 200 else f"HTTP {r.status_code}"
                    if status == "success":
                        return
                    await anyio.sleep(0.05)
                raise RuntimeError(f"run {dispatch['runId']} is {status!r}, not success, after {BOUND} s")

            window = 0

            async def record(signum: signal.Signals, what: str) -> None:
                child.proc.send_signal(signum)
                await anyio.to_thread.run_sync(
                    functools.partial(child.wait_line, f"{MARK} {what} {window}", exact=True)
                )

            say("warming up with two webhooks ...")
            for _ in range(2):
                await finish(await push())
            idle: list[Path] = []
            measured: list[Path] = []
            for i in range(rounds):
                say(f"round {i + 1}/{rounds}: {idle_seconds:.1f} s idle, then one webhook ...")
                window += 1
                await record(signal.SIGUSR1, "recording")
                await anyio.sleep(idle_seconds)
                await record(signal.SIGUSR2, "stopped")
                idle.append(dumps / f"window-{window}.json")
                window += 1
                body, headers = webhook(repo, commit(repo))
                await record(signal.SIGUSR1, "recording")
                r = await http.post(f"/webhook/{ORG}/generic/{SOURCE}", content=body, headers=headers)
                if r.status_code not in (200, 202):
                    raise RuntimeError(f"webhook answered {r.status_code}: {r.text[:300]}")
                dispatch = await expect("job.dispatch")
                await record(signal.SIGUSR2, "stopped")
                measured.append(dumps / f"window-{window}.json")
                await finish(dispatch)
    finally:
        child.stop()
    return report([Window.load(p) for p in measured], [Window.load(p) for p in idle])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ("--child", "--run"):
        if sys.argv[1] == "--child":
            run_program(sys.argv[3], sys.argv[4:], sys.argv[2])
        else:
            run_program(sys.argv[2], sys.argv[3:], None)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="Measured webhooks (default 3).")
    parser.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="Seconds of each idle window (default 3; keep it above the orchestrator's 2 s read "
        "caches, or some webhooks find the source and its secret cached and take a shorter "
        "path than others).",
    )
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")
    parser.add_argument("--quiet", action="store_true", help="No progress lines on stderr.")
    opts = parser.parse_args()
    import anyio

    with tempfile.TemporaryDirectory(prefix="webhook-path-") as tmp:
        result = anyio.run(measure, opts.rounds, opts.idle, Path(tmp), opts.quiet)
    if opts.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
