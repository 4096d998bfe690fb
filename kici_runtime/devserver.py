"""``make dev``: an orchestrator in independent mode on an embedded PostgreSQL 18, with one local agent.

Everything lives under ``.kici-dev/`` in the current directory: the generated master key and admin token (kept
across runs), the database, payloads, the sample repository copied from ``examples/hello`` and the agent's work
directories. It prints what to do next: register the sample repository as a ``local`` source with
``kici-admin`` and send it a signed push webhook with ``curl``. Ctrl-C stops everything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

DEV_ORG = "dev"
SOURCE_NAME = "hello"


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
    env = {**os.environ, "GIT_AUTHOR_NAME": "KiCI dev", "GIT_AUTHOR_EMAIL": "dev@kici.invalid",
           "GIT_COMMITTER_NAME": "KiCI dev", "GIT_COMMITTER_EMAIL": "dev@kici.invalid"}
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
        "repository": {"full_name": "example/hello", "name": "hello", "default_branch": "main",
                       "clone_url": repo.resolve().as_uri()},
        "sender": {"login": "dev", "id": 1},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"kici-standalone exited with status {proc.returncode}; see the log above")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise click.ClickException("kici-standalone did not become healthy within two minutes")


@click.command()
@click.option("--port", default=4000, show_default=True, help="Port of the orchestrator.")
@click.option("--dir", "dev_dir", default=".kici-dev", show_default=True, help="Where dev state is kept.")
@click.option("--examples", default="examples", show_default=True, help="Folder holding the sample repository.")
def main(port: int, dev_dir: str, examples: str) -> None:
    """Start kici-standalone (embedded PostgreSQL 18) and one kici-agent, then print the next steps."""
    root = Path(dev_dir).resolve()
    state = _state(root)
    repo, sha = sample_repo(root, Path(examples).resolve())
    body = push_payload(repo, sha)
    (root / "push.json").write_bytes(body)
    signature = "sha256=" + hmac.new(state["webhookSecret"].encode(), body, hashlib.sha256).hexdigest()
    base = f"http://127.0.0.1:{port}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    orch_env = {
        **clean,
        "KICI_MODE": "independent", "KICI_DEV": "true", "KICI_DATABASE_URL": "embedded",
        "KICI_DATA_DIR": str(root / "data"), "KICI_PORT": str(port), "KICI_HOST": "127.0.0.1",
        "KICI_SECRET_KEY": state["secretKey"], "KICI_BOOTSTRAP_ADMIN_TOKEN": state["adminToken"],
        "KICI_AGENT_AUTH": "none", "KICI_LOG_LEVEL": "info",
    }
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    orch_log = (logs / "orchestrator.log").open("ab")
    agent_log = (logs / "agent.log").open("ab")
    orch = subprocess.Popen([sys.executable, "-m", "kici_runtime.standalone"], env=orch_env,
                            stdout=orch_log, stderr=subprocess.STDOUT)
    procs: list[subprocess.Popen[bytes]] = [orch]
    try:
        click.echo(f"Starting kici-standalone on {base} (embedded PostgreSQL 18 under {root / 'data'}) ...")
        _wait_healthy(base, orch)
        agent_env = {**clean, "KICI_ORCHESTRATOR_URL": f"ws://127.0.0.1:{port}/ws", "KICI_AGENT_ID": "dev-agent",
                     "KICI_AGENT_LABELS": "local", "KICI_AGENT_WORK_DIR": str(root / "agent-work")}
        procs.append(subprocess.Popen([sys.executable, "-m", "kici_runtime.agent"], env=agent_env,
                                      stdout=agent_log, stderr=subprocess.STDOUT))
        admin = f"{Path(sys.executable).parent / 'kici-admin'} --url {base} --token {state['adminToken']}"
        click.echo(f"""
KiCI is running in independent mode.
  orchestrator  {base}   (logs: {logs / 'orchestrator.log'})
  agent         dev-agent, labels: local   (logs: {logs / 'agent.log'})
  admin token   {state['adminToken']}

1. Register the sample repository as a local webhook source:

   {admin} source add generic --org {DEV_ORG} --name {SOURCE_NAME} --provider-type local \\
       --local-repo {repo} --verification hmac_sha256 --secret {state['webhookSecret']}

2. Send it a signed push webhook:

   curl -sS -X POST {base}/webhook/{DEV_ORG}/generic/{SOURCE_NAME} \\
       -H 'content-type: application/json' -H 'x-event-type: push' \\
       -H 'x-signature-256: {signature}' --data-binary @{root / 'push.json'}

3. Watch the run:

   {admin} runs list
   {admin} runs logs <runId> --follow
   {admin} event-log list

Press Ctrl-C to stop.
""")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        raise click.ClickException("a dev process exited; see the logs under " + str(logs))
    except KeyboardInterrupt:
        click.echo("\nStopping ...")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        orch_log.close()
        agent_log.close()


if __name__ == "__main__":
    main()
