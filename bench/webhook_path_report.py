"""The reporting side of ``bench/webhook_path.py``: how recorded windows become the webhook path's figures.

:class:`Window` is one window as the child dumped it; :func:`report` attributes the measured windows' calls (beyond
the idle windows' rates) to the path, its contexts and layer crossings; :func:`print_report` prints the result.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webhook_path_recorder import LAYERS


@dataclass
class Window:
    """One recorded window, as the child dumped it."""

    duration: float
    functions: list[tuple[str, str]]
    contexts: dict[int, dict[str, str]]
    calls: list[tuple[float, int, int, int]]

    @classmethod
    def load(cls, path: Path) -> Window:
        raw = json.loads(path.read_text())
        return cls(
            duration=raw["duration"],
            functions=[(m, q) for m, q in raw["functions"]],
            contexts={int(k): v for k, v in raw["contexts"].items()},
            calls=[(t, c, f, k) for t, c, f, k in raw["calls"]],
        )

    def name(self, index: int) -> str:
        module, qualname = self.functions[index]
        return f"{module}:{qualname}"


def layer(function: str) -> str:
    return function.split(".", 1)[0].split(":", 1)[0].removeprefix("kici_")


@dataclass
class Counted:
    """The calls of one measured window that belong to the delivery (see the module docstring)."""

    calls: list[tuple[float, int, str, str | None]] = field(default_factory=list)  # time, context, callee, caller
    kinds: dict[int, str] = field(default_factory=dict)


def attribute(window: Window, idle: list[Window]) -> Counted:
    """Leave out what the idle windows show the background doing: a long-lived task's calls up to its idle rate."""
    idle_seconds = sum(w.duration for w in idle)
    idle_rate: Counter[tuple[int, str]] = Counter()
    long_lived: set[int] = set()
    for w in idle:
        for _, ctx, f, _ in w.calls:
            idle_rate[(ctx, w.name(f))] += 1
            long_lived.add(ctx)
    by_key: dict[tuple[int, str], list[tuple[float, int, str, str | None]]] = defaultdict(list)
    for t, ctx, f, caller in window.calls:
        name = window.name(f)
        by_key[(ctx, name)].append((t, ctx, name, window.name(caller) if caller >= 0 else None))
    out = Counted()
    for (ctx, name), calls in by_key.items():
        if ctx in long_lived and idle_rate[(ctx, name)]:
            expected = idle_rate[(ctx, name)] / idle_seconds * window.duration
            keep = max(0, round(len(calls) - expected))
            calls = calls[len(calls) - keep :] if keep else []
        out.calls.extend(calls)
    out.calls.sort()
    for ctx in {c for _, c, _, _ in out.calls}:
        out.kinds[ctx] = window.contexts.get(ctx, {}).get("kind", "?")
    return out


def carrying(calls: list[tuple[float, int, str, str | None]]) -> set[int]:
    """The contexts that run a function no other context runs. The others only repeat what those do (a connection
    pool's return callback, say): side work, not a hand-off of the delivery."""
    where: dict[str, set[int]] = defaultdict(set)
    for _, ctx, f, _ in calls:
        where[f].add(ctx)
    return {next(iter(ctxs)) for ctxs in where.values() if len(ctxs) == 1}


def report(measured: list[Window], idle: list[Window]) -> dict[str, Any]:
    """Functions, calls, contexts, hand-offs and layer crossings of the path, over the measured windows."""
    counted = [attribute(w, idle) for w in measured]
    path = set.intersection(*({f for _, _, f, _ in c.calls} for c in counted))
    per_window: list[dict[str, int]] = []
    edge_sets: list[set[tuple[str, str]]] = []
    for c in counted:
        on_path = [call for call in c.calls if call[2] in path]
        crossings = [(caller, f) for _, _, f, caller in on_path if caller is not None and layer(caller) != layer(f)]
        kinds = Counter(c.kinds[ctx] for ctx in {ctx for _, ctx, _, _ in on_path})
        per_window.append(
            {
                "calls": len(on_path),
                "contexts": sum(kinds.values()),
                "carrying": len(carrying(on_path)),
                "tasks": kinds["task"],
                "threads": kinds["thread"],
                "loopCallbacks": kinds["loop callback"],
                "crossings": len(crossings),
            }
        )
        edge_sets.append(set(crossings))
    edges = set.intersection(*edge_sets)
    first = counted[0]
    order: dict[str, tuple[float, int]] = {}
    calls_of: Counter[str] = Counter()
    context_rank: dict[int, int] = {}
    contexts: list[dict[str, Any]] = []
    carried = carrying([call for call in first.calls if call[2] in path])
    for t, ctx, f, _ in first.calls:
        if f not in path:
            continue
        if ctx not in context_rank:
            context_rank[ctx] = len(context_rank) + 1
            contexts.append(
                {
                    "context": context_rank[ctx],
                    "kind": first.kinds[ctx],
                    "first": f,
                    "calls": 0,
                    "carries": ctx in carried,
                }
            )
        contexts[context_rank[ctx] - 1]["calls"] += 1
        order.setdefault(f, (t, ctx))
        calls_of[f] += 1
    steps = [
        {"function": f, "layer": layer(f), "calls": calls_of[f], "context": context_rank[ctx]}
        for f, (_, ctx) in sorted(order.items(), key=lambda kv: kv[1][0])
    ]

    def median(key: str) -> int:
        return round(statistics.median(w[key] for w in per_window))

    handoffs = median("carrying") - 1
    by_layer = Counter(layer(f) for f in path)
    return {
        "rounds": len(measured),
        "functions": len(path),
        "modules": len({f.split(":", 1)[0] for f in path}),
        "functionsByLayer": {name: by_layer[name.removeprefix("kici_")] for name in LAYERS},
        "calls": median("calls"),
        "contexts": median("contexts"),
        "carryingContexts": median("carrying"),
        "tasks": median("tasks"),
        "threads": median("threads"),
        "loopCallbacks": median("loopCallbacks"),
        "handOffs": max(0, handoffs),
        "crossings": median("crossings"),
        "crossingEdges": len(edges),
        "windowMs": round(statistics.median(w.duration for w in measured) * 1000, 1),
        "perWindow": per_window,
        "edges": sorted(f"{a} -> {b}" for a, b in edges),
        "path": steps,
        "contextsOfFirstWindow": contexts,
    }


def print_report(result: dict[str, Any]) -> None:
    rows = [
        ("functions on the path", result["functions"]),
        ("  in modules", result["modules"]),
        ("  core / adapters / runtime", " / ".join(str(v) for v in result["functionsByLayer"].values())),
        ("calls", result["calls"]),
        ("contexts (tasks, threads, callbacks)", result["contexts"]),
        ("  tasks / threads / loop callbacks", f"{result['tasks']} / {result['threads']} / {result['loopCallbacks']}"),
        ("  carrying the delivery", result["carryingContexts"]),
        ("asynchronous hand-offs", result["handOffs"]),
        ("layer crossings (calls)", result["crossings"]),
        ("layer crossings (distinct edges)", result["crossingEdges"]),
        ("measured window (median ms)", result["windowMs"]),
    ]
    print(f"webhook -> job.dispatch, {result['rounds']} webhooks (medians)")
    for label, value in rows:
        print(f"  {label:<38} {value}")
    print("\npath (first call order; context = n-th task/thread to run our code):")
    for i, step in enumerate(result["path"], 1):
        print(
            f"  {i:3} [{step['context']}] {step['layer']:<8} {step['function']}"
            + (f"  x{step['calls']}" if step["calls"] > 1 else "")
        )
    print("\ncontexts (first window; the function each began with):")
    for ctx in result["contextsOfFirstWindow"]:
        side = "" if ctx["carries"] else " (side)"
        print(f"  [{ctx['context']}] {ctx['kind'] + side:<20} {ctx['calls']:4} calls  {ctx['first']}")
    print("\nlayer-crossing edges:")
    for edge in result["edges"]:
        print(f"  {edge}")
