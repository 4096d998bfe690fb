"""The simulated agents of ``bench/dispatch.py``: plain WebSocket clients that register like the reference agent.

:class:`Workers` take every ``job.dispatch`` at once and record when it arrived; :func:`idle_agents` hold an idle
fleet that only sends heartbeats, in this process or (:func:`idle_agents_elsewhere`) in a child process of the
benchmark at the lowest CPU priority (:func:`idle_agents_child`).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SCRIPT = str(Path(__file__).resolve().with_name("dispatch.py"))  # runs the child of idle_agents_elsewhere


def _msg(**fields: Any) -> str:
    return json.dumps({"messageId": str(uuid.uuid4()), "timestamp": int(time.time() * 1000), **fields})


AUTO_LABELS = ["kici:os:linux", "kici:arch:x64", "kici:arch:amd64", "kici:role:builder", "kici:role:init-runner"]


async def _register(port: int, agent_id: str, labels: list[str]) -> ClientConnection:
    """Connect and register like the reference agent: operator labels plus its auto-labels, its host included."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws", max_queue=64, open_timeout=120)
    labels = [*labels, *AUTO_LABELS, f"kici:host:{agent_id}"]
    await ws.send(
        _msg(
            type="agent.register",
            agentId=agent_id,
            labels=labels,
            maxConcurrency=1,
            platform="linux",
            arch="x64",
            inFlightJobs=[],
        )
    )
    while json.loads(await ws.recv()).get("type") != "register.ack":
        pass
    return ws


class Workers:
    """Agents that take every job at once and record when each run's dispatch arrived."""

    def __init__(self) -> None:
        self.dispatched: dict[str, float] = {}  # run id -> perf_counter at receipt
        self.wall: dict[str, float] = {}  # run id -> epoch seconds at receipt
        self.all_connected = anyio.Event()

    async def run(self, port: int, count: int) -> None:
        ready = 0

        async def agent(i: int) -> None:
            nonlocal ready
            ws = await _register(port, f"worker-{i}", ["bench"])
            ready += 1
            if ready == count:
                self.all_connected.set()

            async def heartbeats() -> None:  # like any agent: without them it is closed (4004) after 180 s
                while True:
                    await anyio.sleep(30)
                    await ws.send(json.dumps({"type": "heartbeat", "timestamp": int(time.time() * 1000)}))

            try:
                async with anyio.create_task_group() as beats:
                    beats.start_soon(heartbeats)
                    await self._serve(ws)
                    beats.cancel_scope.cancel()
            except* ConnectionClosed:
                print(f"worker-{i} was disconnected: {ws.close_code} {ws.close_reason}")

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(agent, i)

    async def _serve(self, ws: ClientConnection) -> None:
        """Take every ``job.dispatch``: ack, running, success."""
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") != "job.dispatch":
                continue
            self.dispatched.setdefault(msg["runId"], time.perf_counter())
            self.wall.setdefault(msg["runId"], time.time())
            ids = {"runId": msg["runId"], "jobId": msg["jobId"]}
            await ws.send(_msg(type="job.ack", **ids))
            await ws.send(_msg(type="job.status", state="running", **ids))
            await ws.send(_msg(type="job.status", state="success", data={"exitCode": 0}, **ids))


async def idle_agents(port: int, count: int, connected: anyio.Event, stop: anyio.Event) -> None:
    """``count`` idle agents (registered on one of 50 label sets none of which runs the bench job, heartbeat every
    30 s) until ``stop``."""
    limiter = anyio.CapacityLimiter(50)
    done = 0

    async def agent(i: int) -> None:
        nonlocal done
        async with limiter:
            ws = await _register(port, f"idle-{i}", ["idle", f"pool-{i % 50}"])
        done += 1
        if done == count:
            connected.set()
        try:
            with anyio.move_on_after(random.uniform(0, 30)):
                await stop.wait()
            while not stop.is_set():
                await ws.send(json.dumps({"type": "heartbeat", "timestamp": int(time.time() * 1000)}))
                with anyio.move_on_after(30):
                    await stop.wait()
        except ConnectionClosed:
            pass
        finally:
            await ws.close()

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(agent, i)


async def idle_agents_elsewhere(port: int, count: int, connected: anyio.Event, stop: anyio.Event) -> None:
    """:func:`idle_agents` in a child process of the benchmark, so that the process measuring the latency holds
    only the working agents: its event loop and garbage collector do not grow with the idle fleet (that would
    be the benchmark measuring itself)."""
    cmd = [sys.executable, SCRIPT, "--idle-agents-child", str(count), "--port", str(port)]
    async with await anyio.open_process(cmd, stderr=None) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            async for chunk in proc.stdout:
                if b"ready" in chunk:
                    connected.set()
                    break
            await stop.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await proc.stdin.aclose()  # the child stops at end of input
                with anyio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()


async def idle_agents_child(port: int, count: int) -> None:
    """The child of :func:`idle_agents_elsewhere`: prints ``ready`` once every agent registered and keeps them
    until its standard input closes. It runs at the lowest CPU priority: 10,000 agents' heartbeats and WebSocket
    pings cost this client process a good share of a core, which on a real fleet other machines pay, and here
    it would take that CPU from the orchestrator being measured (a heartbeat only has to arrive within 180 s)."""
    os.nice(19)
    connected, stop = anyio.Event(), anyio.Event()

    async def until_end_of_input() -> None:
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(idle_agents, port, count, connected, stop)
        tg.start_soon(until_end_of_input)
        await connected.wait()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
