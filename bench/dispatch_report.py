"""The figures of ``bench/dispatch.py``: one phase's measurements and the side-by-side report of two phases."""

from __future__ import annotations

import argparse
import os

import harness
import psutil

MiB = 1024 * 1024


def total_rss(proc: psutil.Process) -> tuple[int, int]:
    """RSS of the serving process and of its children (processing workers), in bytes."""
    children = 0
    for p in proc.children(recursive=True):
        try:
            children += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return proc.memory_info().rss, children


class Phase:
    """The figures of one webhook phase and idle window."""

    def __init__(self, agents: int) -> None:
        self.agents = agents
        self.latencies: list[float] = []
        self.to_processed: list[float] = []
        self.to_dispatch: list[float] = []
        self.accepted = 0
        self.failed = 0
        self.rate = 0.0
        self.busy_cpu = 0.0  # fraction of one core while webhooks flow
        self.cpu_per_job_ms = 0.0
        self.idle_cpu = 0.0  # fraction of one core with every agent idle
        self.rss = (0, 0)


def report(args: argparse.Namespace, base: Phase, full: Phase) -> None:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 else "-"

    rows = [
        ("webhooks accepted/s", lambda p: p.rate, "{:.1f}"),
        ("2xx -> job.dispatch p50 ms", lambda p: harness.pct(p.latencies, 0.5), "{:.1f}"),
        ("2xx -> job.dispatch p99 ms", lambda p: harness.pct(p.latencies, 0.99), "{:.1f}"),
        ("2xx -> job.dispatch max ms", lambda p: harness.pct(p.latencies, 1.0), "{:.1f}"),
        ("  2xx -> processed p50 ms", lambda p: harness.pct(p.to_processed, 0.5), "{:.1f}"),
        ("  2xx -> processed p99 ms", lambda p: harness.pct(p.to_processed, 0.99), "{:.1f}"),
        ("  processed -> dispatch p50 ms", lambda p: harness.pct(p.to_dispatch, 0.5), "{:.1f}"),
        ("  processed -> dispatch p99 ms", lambda p: harness.pct(p.to_dispatch, 0.99), "{:.1f}"),
        ("CPU per dispatched job ms", lambda p: p.cpu_per_job_ms, "{:.2f}"),
        ("CPU while webhooks flow % core", lambda p: p.busy_cpu * 100, "{:.0f}"),
        ("idle CPU % core", lambda p: p.idle_cpu * 100, "{:.1f}"),
        ("RSS serving MiB", lambda p: p.rss[0] / MiB, "{:.0f}"),
        ("RSS processing children MiB", lambda p: p.rss[1] / MiB, "{:.0f}"),
        ("RSS total MiB", lambda p: sum(p.rss) / MiB, "{:.0f}"),
    ]
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(f"{'':34} {'N=' + str(base.agents):>10} {'N=' + str(full.agents):>10} {'ratio':>8}")
    for name, get, fmt in rows:
        a, b = get(base), get(full)
        print(f"{name:34} {fmt.format(a):>10} {fmt.format(b):>10} {ratio(b, a):>8}")
    extra = full.agents - base.agents
    if extra > 0:
        per_agent = (sum(full.rss) - sum(base.rss)) / extra
        print(
            f"memory per added idle agent: {per_agent / 1024:.1f} KiB (target < 50 KiB); total with {full.agents} "
            f"agents {sum(full.rss) / MiB:.0f} MiB (target < 600 MiB)"
        )
    print(
        f"N={full.agents}: p99 {harness.pct(full.latencies, 0.99):.1f} ms (target < 50 ms at 50 webhooks/s); idle CPU "
        f"{full.idle_cpu * 100:.1f}% of a core (target < 10%)"
    )
