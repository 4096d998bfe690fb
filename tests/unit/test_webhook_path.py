"""bench/webhook_path.py: the call recorder and how recorded windows become the webhook path's figures.

The benchmark itself starts an orchestrator with an embedded PostgreSQL (about 20 s), so it is run by hand (see
bench/README.md); these tests cover its two halves without a server: the profile hook on a small asyncio
program whose modules are named like ours, and the attribution over windows shaped like real recordings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import types
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "webhook_path.py"


@pytest.fixture(scope="module")
def wp() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_path", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["webhook_path"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _module(name: str, source: str, tmp_path: Path, **names: Any) -> types.ModuleType:
    """A module named like one of ours (``kici_core.…``), from source in a ``.py`` file, not imported globally."""
    path = tmp_path / (name.replace(".", "_") + ".py")
    path.write_text(source)
    module = types.ModuleType(name)
    module.__dict__.update(names)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def test_recorder_counts_fresh_calls_callers_and_tasks(
    wp: types.ModuleType, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    core = _module("kici_core.probe", "def decide(x):\n    return [v for v in (x,)][0] + 1\n", tmp_path)
    runtime = _module(
        "kici_runtime.probe",
        """
async def accept(queue):
    await queue.put(decide(1))


async def consume(queue):
    value = await queue.get()
    return finish(value)


def finish(value):
    return value
""",
        tmp_path,
        decide=core.decide,
    )

    async def main() -> None:  # not ours: no call of it is recorded
        queue: asyncio.Queue[int] = asyncio.Queue()
        consumer = asyncio.create_task(runtime.consume(queue))
        await asyncio.sleep(0)  # the consumer now waits on the queue: its resumption is no new call
        await asyncio.create_task(runtime.accept(queue))
        assert await consumer == 2

    recorder = wp.Recorder(tmp_path)
    recorder.start(signal.SIGUSR1, None)
    try:
        asyncio.run(main())
    finally:
        recorder.stop(signal.SIGUSR2, None)
    assert "webhook-path: recording 1" in capfd.readouterr().err
    window = wp.Window.load(tmp_path / "window-1.json")
    calls = [(window.name(f), window.name(c) if c >= 0 else None, ctx) for _, ctx, f, c in window.calls]
    assert [(f, c) for f, c, _ in calls] == [
        ("kici_runtime.probe:consume", None),  # started by the loop: no caller of ours below
        ("kici_runtime.probe:accept", None),
        ("kici_core.probe:decide", "kici_runtime.probe:accept"),  # its list comprehension is no function
        ("kici_runtime.probe:finish", "kici_runtime.probe:consume"),
    ]
    consume_ctx, accept_ctx = calls[0][2], calls[1][2]
    assert consume_ctx != accept_ctx and calls[2][2] == accept_ctx and calls[3][2] == consume_ctx
    assert {window.contexts[consume_ctx]["kind"], window.contexts[accept_ctx]["kind"]} == {"task"}


def _window(
    wp: types.ModuleType, duration: float, calls: list[tuple[int, str, str | None]], kinds: dict[int, str]
) -> Any:
    names: list[tuple[str, str]] = []

    def index(function: str | None) -> int:
        if function is None:
            return -1
        module, qualname = function.split(":")
        if (module, qualname) not in names:
            names.append((module, qualname))
        return names.index((module, qualname))

    rows = [(i * 0.001, ctx, index(f), index(caller)) for i, (ctx, f, caller) in enumerate(calls)]
    return wp.Window(
        duration=duration,
        functions=names,
        calls=rows,
        contexts={ctx: {"kind": kind, "name": ""} for ctx, kind in kinds.items()},
    )


PARSE = "kici_runtime.orchestrator.httpguard:Protocol.on_message_begin"
ROUTE = "kici_runtime.orchestrator.webhook_routes:generic_webhook"
VERIFY = "kici_core.webhooks:verify_generic"
ACCEPT = "kici_adapters.postgres.inbox:PgDeliveryInbox.accept"
RETURNED = "kici_adapters.postgres.pool:Database._returned"
CLAIM = "kici_runtime.orchestrator.worker:DeliveryWorker._claim"
HANDLE = "kici_core.handling:handle_item"
BEAT = "kici_runtime.orchestrator.worker:DeliveryWorker.beat"
SWEEP = "kici_runtime.orchestrator.retention:Retention.sweep"
WORKER = 5  # a long-lived task: it polls in the idle windows too


def test_path_leaves_out_background_and_counts_hand_offs_and_crossings(wp: types.ModuleType) -> None:
    idle = [
        _window(
            wp,
            2.0,
            [
                (WORKER, CLAIM, None),
                (WORKER, CLAIM, None),
                (WORKER, BEAT, None),
                (WORKER, CLAIM, None),
                (WORKER, BEAT, None),
                (WORKER, CLAIM, None),
            ],
            {WORKER: "task"},
        )
    ]  # the worker claims twice and beats once a second with nothing to do

    def delivery(base: int, extra: list[tuple[int, str, str | None]]) -> Any:
        request, side = base + 1, base + 2
        calls = [
            (base, PARSE, None),
            (request, ROUTE, None),
            (request, VERIFY, ROUTE),
            (request, ACCEPT, ROUTE),
            (request, RETURNED, None),
            (side, RETURNED, None),
            (WORKER, CLAIM, None),
            (WORKER, CLAIM, None),
            (WORKER, CLAIM, None),
            (WORKER, BEAT, None),
            (WORKER, HANDLE, CLAIM),
            *extra,
        ]
        kinds = {base: "loop callback", request: "task", side: "task", WORKER: "task", base + 3: "task"}
        return _window(wp, 1.0, calls, kinds)

    measured = [delivery(10, [(13, SWEEP, None)]), delivery(20, [])]  # a sweep happens to tick in the first
    result = wp.report(measured, idle)

    # the worker's claims beyond its idle rate (3 - 2/s x 1 s) count, its one beat a second does not
    assert [step["function"] for step in result["path"]] == [PARSE, ROUTE, VERIFY, ACCEPT, RETURNED, CLAIM, HANDLE]
    assert [step["context"] for step in result["path"]] == [1, 2, 2, 2, 2, 4, 4]
    assert result["functions"] == 7 and result["modules"] == 7
    assert result["functionsByLayer"] == {"kici_core": 2, "kici_adapters": 2, "kici_runtime": 3}
    assert result["calls"] == 8
    # the pool's return callback only repeats what the request task runs: side work, not a hand-off
    assert (result["contexts"], result["carryingContexts"], result["handOffs"]) == (4, 3, 2)
    assert (result["tasks"], result["threads"], result["loopCallbacks"]) == (3, 0, 1)
    assert [c["carries"] for c in result["contextsOfFirstWindow"]] == [True, True, False, True]
    assert result["crossings"] == 3
    assert result["edges"] == sorted([f"{ROUTE} -> {VERIFY}", f"{ROUTE} -> {ACCEPT}", f"{CLAIM} -> {HANDLE}"])
