"""Trigger-matching benchmark.

Headline: the traced evaluation the processing pipeline runs (``TriggerIndex.evaluate(event, trace=True)``
with a time-budget check, one index per lock file) over 50 workflows of branch triggers, in events per
second, and its ratio to the eager check-by-check trace rendering (``tests/support/trace_reference.py``,
how traces were built before they were recorded compactly) measured in the same run; both are measured in
alternating rounds and reported as medians with their spread. The pipeline also renders the stored trace
(``to_dict``): that figure is printed for a stream of recurring branch names and for one where every branch
is new (rendering cannot be shared).

Then, over a lock-file-like set of 50 workflows (globs, regexes, path filters): branch-only trigger
evaluations per second, events per second over a mixed stream with 1-300 changed files, the time of one
pull-request trigger with 7 path globs against 300 files, and the speed-up over a naive matcher that
recompiles every pattern on each evaluation.

Usage: python bench/matching.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import fnmatch
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kici_core import matching, triggers
from kici_core.events import NormalisedEvent
from tests.support import trace_reference

TRACED_TARGET = 25_000
BRANCH_GLOBS = ["main", "release/*", "feature/**", "{main,develop}", "hotfix/*", "v*"]
PUSH_BRANCHES = ["main", "develop", "release/1.2", "feature/login", "hotfix/12", "dependabot/npm/x", "wip"]

PR_PATHS = [
    "src/**",
    "lib/**/*.ts",
    "package.json",
    "tsconfig.json",
    "docs/**/*.md",
    "!**/*.snap",
    "!**/__fixtures__/**",
]


def build_workflows(rng: random.Random) -> list[matching.WorkflowTriggers]:
    """50 workflows shaped like real lock files."""
    out: list[matching.WorkflowTriggers] = []
    for i in range(50):
        raw: list[dict[str, object]] = []
        kind = i % 5
        if kind == 0:
            raw.append({"_type": "push", "branches": [{"type": "glob", "pattern": "main"}], "paths": []})
        elif kind == 1:
            raw.append(
                {
                    "_type": "push",
                    "branches": [
                        {"type": "glob", "pattern": "release/*"},
                        {"type": "regex", "pattern": "^hotfix\\/\\d+$"},
                    ],
                    "paths": [f"services/svc{i}/**", "!**/*.md"],
                }
            )
        elif kind == 2:
            raw.append(
                {
                    "_type": "pr",
                    "events": ["opened", "synchronize", "reopened"],
                    "targetBranches": [{"type": "glob", "pattern": "main"}],
                    "sourceBranches": [],
                    "paths": PR_PATHS,
                }
            )
        elif kind == 3:
            raw.append({"_type": "tag", "patterns": [{"type": "glob", "pattern": "v*"}]})
            raw.append(
                {"_type": "push", "branches": [{"type": "regex", "pattern": f"^team{i}/", "flags": "i"}], "paths": []}
            )
        else:
            raw.append(
                {
                    "_type": "pr",
                    "events": [],
                    "targetBranches": [{"type": "glob", "pattern": "{main,develop}"}],
                    "sourceBranches": [{"type": "glob", "pattern": "feature/**"}],
                    "paths": [],
                }
            )
            raw.append({"_type": "dispatch", "types": ["deploy"]})
        out.append(matching.WorkflowTriggers(name=f"wf-{i}", triggers=tuple(triggers.parse_trigger(r) for r in raw)))
    return out


def changed_files(rng: random.Random, n: int) -> tuple[str, ...]:
    roots = ["src/app", "src/lib", "services/svc7", "docs/guide", "test/__fixtures__", "assets"]
    exts = [".ts", ".md", ".json", ".snap", ".py"]
    return tuple(f"{rng.choice(roots)}/d{rng.randrange(9)}/f{k}{rng.choice(exts)}" for k in range(n))


def events(rng: random.Random, count: int) -> list[NormalisedEvent]:
    branches = ["main", "release/1.2", "hotfix/12", "feature/login", "team3/x", "develop"]
    out = []
    for _ in range(count):
        files = changed_files(rng, rng.randint(1, 300))
        if rng.random() < 0.5:
            out.append(
                NormalisedEvent(
                    type="push", target_branch=rng.choice(branches), changed_files=files, source_repo="acme/api"
                )
            )
        else:
            out.append(
                NormalisedEvent(
                    type="pull_request",
                    action="synchronize",
                    target_branch="main",
                    source_branch="feature/x",
                    base_branch="main",
                    changed_files=files,
                    source_repo="acme/api",
                )
            )
    return out


# --- naive baseline: recompiles every pattern on each evaluation ----------------------------


def naive_glob(pattern: str, value: str) -> bool:
    return re.compile(fnmatch.translate(pattern)).match(value) is not None


def naive_pr_paths(paths: list[str], files: tuple[str, ...]) -> bool:
    include = [p for p in paths if not p.startswith("!")]
    exclude = [p[1:] for p in paths if p.startswith("!")]
    kept = [f for f in files if not any(naive_glob(p, f) for p in exclude)]
    return bool(kept) and any(naive_glob(p, f) for f in kept for p in include)


def naive_branch(patterns: list[str], value: str) -> bool:
    return any(naive_glob(p, value) for p in patterns)


def branch_workflows() -> list[matching.WorkflowTriggers]:
    """50 workflows, each with one ``push`` trigger on a branch glob."""
    return [
        matching.WorkflowTriggers(
            name=f"wf-{i}",
            triggers=(
                triggers.parse_trigger(
                    {
                        "_type": "push",
                        "branches": [{"type": "glob", "pattern": BRANCH_GLOBS[i % len(BRANCH_GLOBS)]}],
                        "paths": [],
                    }
                ),
            ),
        )
        for i in range(50)
    ]


def traced_headline(count: int, rounds: int) -> None:
    """Events/s of the pipeline's traced evaluation vs the eager reference, alternating rounds."""
    workflows = branch_workflows()
    rng = random.Random(7)
    stream = [
        NormalisedEvent(type="push", target_branch=rng.choice(PUSH_BRANCHES), source_repo="acme/app")
        for _ in range(count)
    ]
    index = matching.TriggerIndex(workflows)  # the pipeline keeps one per cached lock file
    deadline = time.perf_counter() + 3600.0

    def check() -> None:  # the pipeline's time-budget check
        if time.perf_counter() > deadline:
            raise TimeoutError

    def per_second(fn: Callable[[NormalisedEvent], object], events: list[NormalisedEvent]) -> float:
        start = time.perf_counter()
        for e in events:
            fn(e)
        return len(events) / (time.perf_counter() - start)

    def traced(e: NormalisedEvent) -> object:
        return index.evaluate(e, trace=True, check=check)

    def stored(e: NormalisedEvent) -> object:
        return index.evaluate(e, trace=True, check=check).to_dict()

    def eager(e: NormalisedEvent) -> object:
        return trace_reference.evaluate_dict(workflows, e)

    base = stream[: max(20, count // 10)]  # the reference is much slower: fewer events per round
    fresh_rounds = [
        [
            NormalisedEvent(type="push", target_branch=f"feature/r{r}-{k}", source_repo="acme/app")
            for k in range(len(base))
        ]
        for r in range(rounds)
    ]
    got: dict[str, list[float]] = {"traced": [], "eager": [], "stored": [], "stored_new": [], "eager_new": []}
    for r in range(rounds):
        got["eager"].append(per_second(eager, base))
        got["eager_new"].append(per_second(eager, fresh_rounds[(r + 1) % rounds]))
        got["traced"].append(per_second(traced, stream))
        got["stored"].append(per_second(stored, stream))
        got["stored_new"].append(per_second(stored, fresh_rounds[r]))
    med = {k: statistics.median(v) for k, v in got.items()}

    def spread(k: str) -> str:
        return f"{min(got[k]):,.0f}-{max(got[k]):,.0f}"

    print(
        f"traced evaluation, 50 workflows of branch triggers (pipeline path): {med['traced']:,.0f} events/s "
        f"(x{med['traced'] / med['eager']:.1f} the eager trace, {med['eager']:,.0f}/s, in the same run; "
        f"target {TRACED_TARGET:,}: {'met' if med['traced'] >= TRACED_TARGET else 'NOT met'})"
    )
    print(f"  medians of {rounds} rounds; range traced {spread('traced')}, eager {spread('eager')}")
    print(
        f"  + stored trace rendered (to_dict): {med['stored']:,.0f} events/s recurring branches "
        f"(x{med['stored'] / med['eager']:.1f}, range {spread('stored')}), {med['stored_new']:,.0f}/s every branch new "
        f"(x{med['stored_new'] / med['eager_new']:.1f} the eager trace on those, {med['eager_new']:,.0f}/s; "
        f"range {spread('stored_new')})"
    )


def rate(fn: Callable[[], object], repeat: int) -> float:
    """Seconds per call (best of 3 batches)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of the traced headline")
    args = parser.parse_args()
    scale = 1 if args.quick else 100
    rng = random.Random(1)
    traced_headline(200 if args.quick else 5_000, 3 if args.quick else args.rounds)

    workflows = build_workflows(rng)
    index = matching.TriggerIndex(workflows)

    # 1. branch-only trigger evaluations
    branch_trigger = workflows[0].triggers[0]
    names = ["main", "feature/login", "release/1.0", "dev"]
    branch_events = [NormalisedEvent(type="push", target_branch=b) for b in names]
    tm = matching.trigger_matches
    n = 2_000 * scale

    def branch_batch() -> None:
        for e in branch_events:
            tm(branch_trigger, e)

    per_batch = rate(branch_batch, n // len(branch_events))
    evals_per_s = len(branch_events) / per_batch

    # 2. events per second over the whole lock file
    stream = events(rng, 20 if args.quick else 400)
    start = time.perf_counter()
    matched = 0
    for e in stream:
        matched += len(index.first_matches(e))
    events_per_s = len(stream) / (time.perf_counter() - start)
    start = time.perf_counter()
    for e in stream[:50]:
        index.evaluate(e, trace=True)
    traced_per_s = min(len(stream), 50) / (time.perf_counter() - start)

    # 3. one PR trigger with 7 path globs against 300 files
    pr_trigger = workflows[2].triggers[0]
    # No file survives, so every file is checked: a third are included then excluded
    # (snapshots and fixtures under src/), the rest fall outside the includes.
    files = tuple(
        f"src/mod{k}/__fixtures__/case{k}.ts"
        if k % 6 == 0
        else f"src/mod{k}/view{k}.test.ts.snap"
        if k % 3 == 0
        else f"assets/img{k}/icon{k}.png"
        for k in range(300)
    )
    pr_event = NormalisedEvent(
        type="pull_request", action="opened", target_branch="main", source_branch="f", changed_files=files
    )
    assert not tm(pr_trigger, pr_event)
    pr_time = rate(lambda: tm(pr_trigger, pr_event), 20 * scale)
    naive_pr_time = rate(lambda: naive_pr_paths(PR_PATHS, files), 2 if args.quick else 10)
    naive_branch_time = rate(
        lambda: [naive_branch(["main"], e.target_branch) for e in branch_events], max(1, n // 40)
    ) / len(branch_events)

    print(
        f"branch-only trigger evaluations: {evals_per_s:,.0f}/s "
        f"(naive: {1 / naive_branch_time:,.0f}/s, x{(1 / naive_branch_time) and evals_per_s * naive_branch_time:.1f})"
    )
    print(
        f"events/s over 50 workflows, 1-300 changed files: {events_per_s:,.0f}/s "
        f"({matched} workflow matches); with full trace: {traced_per_s:,.0f}/s"
    )
    print(
        f"PR trigger, 7 path globs x 300 files: {pr_time * 1000:.3f} ms "
        f"(naive recompiling: {naive_pr_time * 1000:.3f} ms, x{naive_pr_time / pr_time:.1f})"
    )
    ok = evals_per_s >= 1_000_000 and pr_time < 0.0005
    print("targets (>=1,000,000 evals/s, <0.5 ms):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
