"""Shared pieces of the HTTP benchmarks: free ports, readiness polling, a concurrent load generator, percentiles.

The load generator speaks just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies) over plain sockets to
post pre-built requests. A full client such as httpx costs about a millisecond of CPU per request, which on a
small machine shared with the server would measure the client rather than the server.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx
import psutil

from kici_adapters.postgres.embedded import EmbeddedPostgres


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, *, ready: str | None = None, seconds: float = 90) -> None:
    """Poll ``url`` until it answers 200 (and its body contains ``ready``); a benchmark may poll."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            try:
                r = await http.get(url)
                if r.status_code == 200 and (ready is None or ready in r.text):
                    return
            except httpx.HTTPError:
                pass
            await anyio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


Request = Callable[[str], tuple[bytes, dict[str, str]]]
"""Builds (body, headers) for one delivery id."""


def _encode(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads one ``Content-Length`` response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: anyio.abc.SocketStream | None = None
        self.buffer = b""

    async def _fill(self) -> None:
        assert self.stream is not None
        chunk = await self.stream.receive(65536)
        self.buffer += chunk

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.stream is None:
            self.stream = await anyio.connect_tcp(self.host, self.port)
            self.buffer = b""
        await self.stream.send(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        status_line, *header_lines = head.split("\r\n")
        length, close = 0, False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if close:
            await self.aclose()
        return int(status_line.split(" ", 2)[1]), body

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None


async def load(
    url: str, make: Request, *, requests: int, concurrency: int, prefix: str
) -> tuple[float, list[float], int, list[str]]:
    """POST ``requests`` deliveries at ``concurrency``; returns (seconds, latencies, failures, delivery ids).

    Requests are built (and signed) before the clock starts; each of the ``concurrency`` workers keeps one
    connection open and sends its next request when the previous answer is in.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    prepared: list[tuple[str, bytes]] = []
    for i in range(requests):
        delivery = f"{prefix}-{i}-{uuid.uuid4()}"
        body, headers = make(delivery)
        prepared.append((delivery, _encode(f"{host}:{port}", path, body, headers)))
    latencies: list[float] = []
    ids: list[str] = []
    failures = 0
    pending = iter(prepared)

    async def worker() -> None:
        nonlocal failures
        conn = _Connection(host, port)
        try:
            for delivery, raw in pending:
                started = time.perf_counter()
                status, body = await conn.exchange(raw)
                latencies.append(time.perf_counter() - started)
                if status in (200, 202):
                    ids.append(delivery)
                else:
                    if not failures:
                        print(f"first failure: HTTP {status} {body[:200]!r}")
                    failures += 1
        finally:
            await conn.aclose()

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - began
    return elapsed, latencies, failures, ids


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` in milliseconds (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def stop(procs: list[subprocess.Popen[bytes]], pg: EmbeddedPostgres | None, *dirs: Path) -> None:
    """SIGTERM each process (newest first; SIGKILL after 30 s), stop the embedded server, remove the dirs."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if pg is not None:
        pg.stop()
        shutil.rmtree(pg.data_dir, ignore_errors=True)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds of ``proc`` and its children (the orchestrator's processing workers)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
