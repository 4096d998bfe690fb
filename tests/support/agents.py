"""Helpers for tests that drive the agent protocol by hand against a real orchestrator.

* :func:`lock_repo` makes a git repository whose ``.kici/kici.lock.json`` holds the given workflows (each a
  push-to-``main`` workflow), for a ``local`` source to clone from a ``file://`` URL;
* :func:`job` builds one static lock-file job;
* :func:`push` posts a generic ``push`` webhook for such a repository and returns its delivery id;
* :class:`RawAgent` is a hand-driven agent over a plain ``websockets`` client (``KICI_AGENT_AUTH=none``, or a
  token): it registers, waits for given message types (bounded), and sends acks, rejects, statuses, steps and
  logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support import waits

__all__ = ["RawAgent", "job", "lock_repo", "push"]

BOUND = 20.0


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def job(
    name: str, labels: list[str], *, needs: list[Any] | None = None, steps: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A static lock-file job that runs on agents carrying every label of ``labels``."""
    return {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "exact", "value": v} for v in labels],
        "needs": needs or [],
        "steps": steps or [{"name": "step", "run": "true"}],
    }


def lock_repo(root: Path, workflows: dict[str, list[dict[str, Any]]]) -> tuple[Path, str]:
    """A git repository on ``main`` whose lock file has one push-to-``main`` workflow per ``workflows`` entry
    (name -> jobs). Returns the repository path and the commit sha."""
    repo = root / "repo"
    (repo / ".kici").mkdir(parents=True)
    src = {"file": ".kici/workflows/ci.ts", "export": "#default"}
    lock = {
        "schemaVersion": 29,
        "source": src,
        "contentHash": "h",
        "workflows": [
            {
                "name": name,
                "source": src,
                "contentHash": name,
                "compileSchemaVersion": 5,
                "triggers": [{"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []}],
                "jobs": jobs,
            }
            for name, jobs in workflows.items()
        ],
    }
    (repo / ".kici" / "kici.lock.json").write_text(json.dumps(lock))
    _git(repo.parent, "init", "-q", "-b", "main", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "init")
    return repo, _git(repo, "rev-parse", "HEAD")


async def push(base_url: str, repo: Path, sha: str, *, org: str = "acme", source: str = "repo") -> str:
    """Post an unsigned generic ``push`` to ``main`` of ``repo`` (a source with verification ``none``);
    returns the delivery id."""
    delivery = str(uuid.uuid4())
    body = {
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": sha,
        "repository": {"full_name": "acme/repo", "name": "repo", "default_branch": "main", "clone_url": repo.as_uri()},
        "sender": {"login": "t", "id": 1},
    }
    async with httpx.AsyncClient(base_url=base_url, timeout=BOUND) as http:
        r = await http.post(
            f"/webhook/{org}/generic/{source}", json=body, headers={"x-event-type": "push", "x-delivery-id": delivery}
        )
    assert r.status_code in (200, 202), r.text
    return delivery


class RawAgent:
    """One agent connection driven by the test. Every received message is kept in :attr:`received`."""

    def __init__(self, ws: ClientConnection, agent_id: str) -> None:
        self.ws = ws
        self.agent_id = agent_id
        self.received: list[dict[str, Any]] = []
        self._backlog: list[dict[str, Any]] = []

    @classmethod
    async def join(
        cls,
        port: int,
        agent_id: str,
        labels: list[str],
        *,
        max_concurrency: int = 1,
        in_flight: list[dict[str, str]] | None = None,
        token: str | None = None,
    ) -> RawAgent:
        """Connect to ``/ws``, authenticate with ``token`` (none: no-auth mode), send ``agent.register`` and wait
        for ``register.ack``."""
        ws = await connect(f"ws://127.0.0.1:{port}/ws")
        agent = cls(ws, agent_id)
        if token is not None:
            await ws.send(json.dumps({"type": "auth.request", "token": token, "protocolVersion": 1}))
            await agent.expect("auth.success")
        await agent.send(
            {
                "type": "agent.register",
                "agentId": agent_id,
                "labels": labels,
                "maxConcurrency": max_concurrency,
                "platform": "linux",
                "arch": "x64",
                "inFlightJobs": in_flight or [],
            },
            stamp=False,
        )
        ack = await agent.expect("register.ack")
        assert ack["agentId"] == agent_id
        return agent

    def _seen(self) -> str:
        return (
            f"{len(self.received)} message(s) received, the last "
            f"{[(m.get('type'), m.get('jobId')) for m in self.received[-8:]]}"
        )

    async def send(self, message: dict[str, Any], *, stamp: bool = True) -> None:
        """Send one frame; adds ``messageId`` (and ``timestamp`` when ``stamp``) unless present."""
        message = {"messageId": str(uuid.uuid4()), **message}
        if stamp:
            message.setdefault("timestamp", int(time.time() * 1000))
        await self.ws.send(json.dumps(message))

    async def expect(self, kind: str, *, bound: float = BOUND, job_id: str | None = None) -> dict[str, Any]:
        """The next message of type ``kind`` (about ``job_id`` when given); other messages are kept for a later
        :meth:`expect`. Raises WaitTimeout after ``bound`` seconds and ConnectionClosed if the socket closes."""

        def wanted(m: dict[str, Any]) -> bool:
            return m.get("type") == kind and (job_id is None or m.get("jobId") == job_id)

        for i, kept in enumerate(self._backlog):
            if wanted(kept):
                return self._backlog.pop(i)
        what = f"{kind} for agent {self.agent_id}" + (f" about job {job_id}" if job_id else "")
        with waits.within(bound, what, self._seen):
            while True:
                msg: dict[str, Any] = json.loads(await self.ws.recv())
                self.received.append(msg)
                if wanted(msg):
                    return msg
                self._backlog.append(msg)

    async def closed(self, *, bound: float = BOUND) -> tuple[int, str]:
        """Read until the server closes the socket; its close code and reason."""
        with waits.within(bound, f"the orchestrator to close agent {self.agent_id}'s socket", self._seen):
            try:
                while True:
                    msg = json.loads(await self.ws.recv())
                    self.received.append(msg)
                    self._backlog.append(msg)
            except ConnectionClosed as exc:
                assert exc.rcvd is not None, "closed without a close frame from the server"
                return exc.rcvd.code, exc.rcvd.reason

    # ------------------------------------------------------------------------------------ job messages
    @staticmethod
    def _ids(dispatch: dict[str, Any]) -> dict[str, Any]:
        return {"runId": dispatch["runId"], "jobId": dispatch["jobId"]}

    async def ack(self, dispatch: dict[str, Any]) -> None:
        """``job.ack`` for a received ``job.dispatch``."""
        await self.send({"type": "job.ack", **self._ids(dispatch)})

    async def reject(self, dispatch: dict[str, Any], reason: str = "busy") -> None:
        """``job.reject`` (``busy`` or ``draining``)."""
        await self.send({"type": "job.reject", **self._ids(dispatch), "reason": reason})

    async def status(self, dispatch: dict[str, Any], state: str, data: dict[str, Any] | None = None) -> None:
        """``job.status`` with ``state``."""
        await self.send(
            {
                "type": "job.status",
                **self._ids(dispatch),
                "state": state,
                **({"data": data} if data is not None else {}),
            }
        )

    async def step(
        self, dispatch: dict[str, Any], index: int, name: str, state: str, data: dict[str, Any] | None = None
    ) -> None:
        """``step.status``."""
        await self.send(
            {
                "type": "step.status",
                **self._ids(dispatch),
                "stepIndex": index,
                "stepName": name,
                "state": state,
                **({"data": data} if data is not None else {}),
            }
        )

    async def log(self, dispatch: dict[str, Any], index: int, *lines: str) -> None:
        """``log.chunk``."""
        await self.send({"type": "log.chunk", **self._ids(dispatch), "stepIndex": index, "lines": list(lines)})

    async def heartbeat_job(self, dispatch: dict[str, Any]) -> None:
        """``job.heartbeat`` (no ``messageId`` on the wire)."""
        await self.ws.send(
            json.dumps({"type": "job.heartbeat", **self._ids(dispatch), "timestamp": int(time.time() * 1000)})
        )

    async def run_to_success(self, dispatch: dict[str, Any]) -> None:
        """ack, running, success: a job that passes at once."""
        await self.ack(dispatch)
        await self.status(dispatch, "running")
        await self.status(dispatch, "success", {"exitCode": 0})

    async def close(self) -> None:
        """Close the connection from the agent side."""
        await self.ws.close()
