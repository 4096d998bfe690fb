"""Shared pieces of the HTTP benchmarks: free ports, readiness polling, a concurrent load generator, percentiles."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

import anyio
import httpx


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


async def load(url: str, make: Request, *, requests: int, concurrency: int,
               prefix: str) -> tuple[float, list[float], int, list[str]]:
    """POST ``requests`` deliveries at ``concurrency``; returns (seconds, latencies, failures, delivery ids)."""
    latencies: list[float] = []
    ids: list[str] = []
    failures = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        async def worker() -> None:
            nonlocal failures
            for i in counter:
                delivery = f"{prefix}-{i}-{uuid.uuid4()}"
                body, headers = make(delivery)
                started = time.perf_counter()
                r = await http.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                if r.status_code in (200, 202):
                    ids.append(delivery)
                else:
                    if not failures:
                        print(f"first failure: HTTP {r.status_code} {r.text[:200]}")
                    failures += 1

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
