"""A local server speaking the part of the Docker Engine API the auto-scaler uses, on a unix socket.

Usage::

    with FakeEngine(tmp_path / "docker.sock", images={"kici-agent:test"}) as engine:
        client = EngineClient(socket_path=engine.socket_path)

Endpoints (with or without a ``/v1.NN`` prefix): ``GET /_ping``, ``GET /version``, ``GET /images/{name}/json``,
``POST /images/create`` (only images in ``pullable`` can be pulled), ``GET /networks/{name}``,
``POST /networks/create``, ``POST /containers/create?name=``, ``POST /containers/{id}/start``,
``GET /containers/{id}/json``, ``POST /containers/{id}/stop``, ``DELETE /containers/{id}``,
``GET /containers/json?all=&filters={"label": [...]}``. Errors are ``{"message": ...}`` with Docker's statuses
(404 no such image/container/network, 409 name conflict).

A container can run for real: with ``run_agents=True`` starting a container starts a ``kici-agent`` process
with the container's environment (``Env``), so a scaler-spawned job actually runs; the container is
``running`` while that process lives and ``exited`` (with its exit code) afterwards. Without it, a started
container just counts as running. :meth:`FakeEngine.fail` makes the next matching request fail with a given
status and message. Every request is recorded in :attr:`FakeEngine.requests`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeContainer", "FakeEngine"]


@dataclass
class FakeContainer:
    """One container the fake engine knows."""

    id: str
    name: str
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    host_config: dict[str, Any]
    network: str | None
    ip: str | None
    state: str = "created"  # created | running | exited
    exit_code: int | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def refresh(self) -> None:
        if self.process is not None and self.state == "running":
            code = self.process.poll()
            if code is not None:
                self.state, self.exit_code = "exited", code


@dataclass
class FakeEngine:
    """The fake engine. ``images`` are present; ``pullable`` can be pulled; ``flavour`` is ``docker`` or
    ``podman`` (what ``/version`` says)."""

    socket_path: Path
    images: set[str] = field(default_factory=set)
    pullable: set[str] = field(default_factory=set)
    run_agents: bool = False
    flavour: str = "docker"
    agent_env: dict[str, str] = field(default_factory=dict)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)
    _server: socketserver.ThreadingUnixStreamServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ips: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeEngine:
        engine = self

        class Handler(_Handler):
            owner = engine

        self._server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for c in list(self.containers.values()):
            self._kill(c)
        self.socket_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ test helpers
    def fail(self, method: str, path_pattern: str, status: int, message: str) -> None:
        """The next request matching ``method`` and the regex ``path_pattern`` answers ``status`` / message."""
        with self._lock:
            self.failures.append((method, path_pattern, status, message))

    def add_container(self, name: str, labels: dict[str, str], *, running: bool = True) -> FakeContainer:
        """A container created behind the scaler's back (an orphan, for example)."""
        with self._lock:
            c = FakeContainer(
                id=uuid.uuid4().hex * 2,
                name=name,
                image="busybox",
                env={},
                labels=labels,
                host_config={},
                network=None,
                ip=None,
                state="running" if running else "exited",
            )
            self.containers[c.id] = c
            return c

    def by_name(self, name: str) -> FakeContainer | None:
        """The container called ``name``."""
        with self._lock:
            return next((c for c in self.containers.values() if c.name == name), None)

    def live(self) -> list[FakeContainer]:
        """Containers that exist (any state)."""
        with self._lock:
            for c in self.containers.values():
                c.refresh()
            return list(self.containers.values())

    # ------------------------------------------------------------------------------------ behaviour
    def _start_process(self, c: FakeContainer) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
        work = Path(tempfile.mkdtemp(prefix=f"fake-{c.name}-"))
        env = {**base, **self.agent_env, **c.env, "KICI_AGENT_WORK_DIR": str(work / "work")}
        c.log_path = work / "agent.log"
        with open(c.log_path, "wb") as out:
            c.process = subprocess.Popen(
                [sys.executable, "-m", "kici_runtime.agent", "--log-level", "INFO"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _kill(self, c: FakeContainer, grace: float = 5.0) -> None:
        if c.process is not None and c.process.poll() is None:
            c.process.send_signal(signal.SIGTERM)
            try:
                c.process.wait(grace)
            except subprocess.TimeoutExpired:
                c.process.kill()
                c.process.wait(10)
        if c.state == "running":
            c.state = "exited"
            c.exit_code = c.process.returncode if c.process is not None else 137

    def _find(self, ref: str) -> FakeContainer | None:
        c = self.containers.get(ref)
        if c is None:
            c = next((x for x in self.containers.values() if x.name == ref or x.id.startswith(ref)), None)
        if c is not None:
            c.refresh()
        return c

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        path = re.sub(r"^/v\d+\.\d+", "", path)
        with self._lock:
            self.requests.append((method, path))
            for i, (m, pattern, status, message) in enumerate(self.failures):
                if m == method and re.search(pattern, path):
                    del self.failures[i]
                    return status, {"message": message}
            return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        q = {k: v[-1] for k, v in query.items()}
        if path == "/_ping":
            return 200, "OK"
        if path == "/version":
            name = "Podman Engine" if self.flavour == "podman" else "Engine"
            return 200, {"Version": "1.0-fake", "ApiVersion": "1.41", "Components": [{"Name": name}]}
        if m := re.fullmatch(r"/images/(.+)/json", path):
            name = unquote(m.group(1))
            return (
                (200, {"Id": "sha256:" + name, "RepoTags": [name]})
                if name in self.images
                else (404, {"message": f"No such image: {name}"})
            )
        if path == "/images/create" and method == "POST":
            name = f"{q.get('fromImage', '')}:{q.get('tag', 'latest')}"
            if name in self.pullable:
                self.images.add(name)
                return 200, {"status": f"Downloaded newer image for {name}"}
            return 404, {
                "message": f"pull access denied for {q.get('fromImage')}, repository does not exist or may "
                "require 'docker login'"
            }
        if path == "/networks/create" and method == "POST":
            if body["Name"] in self.networks:
                return 409, {"message": f"network with name {body['Name']} already exists"}
            self.networks[body["Name"]] = body
            return 201, {"Id": uuid.uuid4().hex, "Warning": ""}
        if m := re.fullmatch(r"/networks/([^/]+)", path):
            net = self.networks.get(unquote(m.group(1)))
            return (
                (200, {"Name": net["Name"], "Labels": net.get("Labels", {})})
                if net
                else (404, {"message": f"network {unquote(m.group(1))} not found"})
            )
        if path == "/containers/create" and method == "POST":
            return self._create(q.get("name") or uuid.uuid4().hex[:12], body)
        if path == "/containers/json":
            return 200, self._list(q)
        if m := re.fullmatch(r"/containers/([^/]+)(/[a-z]+)?", path):
            c = self._find(unquote(m.group(1)))
            if c is None:
                return 404, {"message": f"No such container: {unquote(m.group(1))}"}
            return self._container_op(c, method, m.group(2) or "", q)
        return 404, {"message": f"page not found: {method} {path}"}

    def _create(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if any(c.name == name for c in self.containers.values()):
            return 409, {"message": f'Conflict. The container name "/{name}" is already in use'}
        if body.get("Image") not in self.images:
            return 404, {"message": f"No such image: {body.get('Image')}"}
        host = body.get("HostConfig") or {}
        network = host.get("NetworkMode")
        if network and network not in ("bridge", "host", "none", "default") and network not in self.networks:
            return 404, {"message": f"network {network} not found"}
        env = dict(item.split("=", 1) for item in body.get("Env") or [])
        ip = f"172.30.0.{next(self._ips)}" if network and network in self.networks else None
        c = FakeContainer(
            id=uuid.uuid4().hex * 2,
            name=name,
            image=body["Image"],
            env=env,
            labels=dict(body.get("Labels") or {}),
            host_config=host,
            network=network,
            ip=ip,
        )
        self.containers[c.id] = c
        return 201, {"Id": c.id, "Warnings": []}

    def _list(self, q: dict[str, str]) -> list[dict[str, Any]]:
        wanted = json.loads(q.get("filters") or "{}").get("label", [])
        out = []
        for c in self.containers.values():
            c.refresh()
            if q.get("all") not in ("true", "1") and c.state != "running":
                continue
            if all(_label_matches(c.labels, w) for w in wanted):
                out.append(
                    {"Id": c.id, "Names": [f"/{c.name}"], "Image": c.image, "State": c.state, "Labels": c.labels}
                )
        return out

    def _container_op(self, c: FakeContainer, method: str, op: str, q: dict[str, str]) -> tuple[int, Any]:
        if method == "GET" and op == "/json":
            networks = {c.network: {"IPAddress": c.ip or ""}} if c.network else {}
            return 200, {
                "Id": c.id,
                "Name": f"/{c.name}",
                "State": {"Status": c.state, "Running": c.state == "running", "ExitCode": c.exit_code or 0},
                "Config": {"Image": c.image, "Labels": c.labels, "Env": [f"{k}={v}" for k, v in c.env.items()]},
                "HostConfig": c.host_config,
                "NetworkSettings": {"Networks": networks},
            }
        if method == "POST" and op == "/start":
            if c.state == "running":
                return 304, None
            c.state = "running"
            if self.run_agents:
                self._start_process(c)
            return 204, None
        if method == "POST" and op == "/stop":
            if c.state != "running":
                return 304, None
            self._kill(c, float(q.get("t", "5")))
            return 204, None
        if method == "DELETE" and op == "":
            if c.state == "running" and q.get("force") not in ("true", "1"):
                return 409, {"message": f"cannot remove container {c.name}: container is running"}
            self._kill(c, 0.5)
            del self.containers[c.id]
            return 204, None
        return 404, {"message": f"page not found: {method} {op}"}


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    """A ``label`` filter entry: ``key`` (present) or ``key=value``."""
    key, eq, value = wanted.partition("=")
    return labels.get(key) == value if eq else key in labels


class _Handler(BaseHTTPRequestHandler):
    owner: FakeEngine
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        status, payload = self.owner.handle(self.command, parts.path, parse_qs(parts.query), body)
        data = (
            b""
            if payload is None or status in (204, 304)
            else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve
