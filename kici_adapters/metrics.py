"""Prometheus metrics: one registry per process, every ``kici_*`` series the deploy guide names.

Adapters and runtimes import this module and call the metric objects directly; nothing here touches the
network. ``render()`` produces the text exposition for ``GET /metrics``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)

# --- the nine the deploy guide names -------------------------------------------------------------
webhooks_received = Counter(
    "kici_webhooks_received_total",
    "Webhook deliveries entering the orchestrator.",
    ["source", "event"],
    registry=REGISTRY,
)
webhooks_processed = Counter(
    "kici_webhooks_processed_total",
    "Deliveries that finished the processing pipeline, by decision.",
    ["result"],
    registry=REGISTRY,
)
trigger_match_duration = Histogram(
    "kici_trigger_match_duration_seconds",
    "Time spent evaluating a lock file's triggers against one event.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
lockfile_cache_hits = Counter("kici_lockfile_cache_hits_total", "Lock-file cache hits.", registry=REGISTRY)
lockfile_cache_misses = Counter(
    "kici_lockfile_cache_misses_total", "Lock-file cache misses (a fetch was attempted).", registry=REGISTRY
)
agents_active = Gauge(
    "kici_agents_active",
    "Agents registered and connected to any live orchestrator process sharing the database.",
    registry=REGISTRY,
)
dispatch_queue_depth = Gauge(
    "kici_dispatch_queue_depth", "Dispatch queue entries by status.", ["status"], registry=REGISTRY
)
jobs_dispatched = Counter("kici_jobs_dispatched_total", "job.dispatch messages sent to agents.", registry=REGISTRY)
platform_connection_status = Gauge(
    "kici_platform_connection_status",
    "1 while the Platform relay connection is authenticated, else 0.",
    registry=REGISTRY,
)
dedup_hits = Counter("kici_dedup_hits_total", "Deliveries suppressed as duplicates.", registry=REGISTRY)

# --- what operators need beyond the guide --------------------------------------------------------
processing_failures = Counter(
    "kici_processing_failures_total",
    "Deliveries whose processing failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
inbox_depth = Gauge("kici_inbox_depth", "Accepted deliveries not yet processed.", registry=REGISTRY)
lockfile_fetch_duration = Histogram(
    "kici_lockfile_fetch_duration_seconds",
    "Time to fetch a lock file from the provider (cache misses only).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
payload_offload_failures = Counter(
    "kici_payload_offload_failures_total",
    "Accepted payloads whose move from the database to object storage failed (kept and retried).",
    registry=REGISTRY,
)
payload_offload_skipped = Counter(
    "kici_payload_offload_skipped_total",
    "Accepted payloads the offloader gave up moving (their key is refused); they stay readable in the database.",
    registry=REGISTRY,
)
agent_messages_dropped = Counter(
    "kici_agent_messages_dropped_total",
    "Job-scoped agent messages dropped, by reason (e.g. the job is not assigned to the sending agent).",
    ["reason"],
    registry=REGISTRY,
)
platform_buffer_dropped = Counter(
    "kici_platform_buffer_dropped_total",
    "Outbound Platform messages dropped because the buffer was full.",
    registry=REGISTRY,
)
github_check_runs = Counter(
    "kici_github_check_runs_total",
    "Check-run requests to GitHub, by result.",
    ["result"],
    registry=REGISTRY,
)

# --- the container auto-scaler (kici_runtime.orchestrator.scaler) --------------------------------------------
scaler_containers = Gauge(
    "kici_scaler_containers",
    "Containers of each scaler by state: starting (agent not connected yet) or running.",
    ["scaler", "state"],
    registry=REGISTRY,
)
scaler_spawn_failures = Counter(
    "kici_scaler_spawn_failures_total",
    "Container spawns that failed, by scaler and reason (image: missing or not pullable; spawn: engine error).",
    ["scaler", "reason"],
    registry=REGISTRY,
)
scaler_spawn_duration = Histogram(
    "kici_scaler_spawn_duration_seconds",
    "Time from the decision to start a container to the container running (image check, create, start, rules).",
    ["scaler"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)

# --- clustering and retention (kici_runtime.orchestrator.cluster) ----------------------------------------------
cluster_instances = Gauge(
    "kici_cluster_instances",
    "Orchestrator processes sharing the database whose heartbeat is current.",
    registry=REGISTRY,
)
retention_deleted = Counter(
    "kici_retention_deleted_total",
    "What the retention sweeper removed, by kind (payloads, log_chunks, runs, jobs, steps, check_runs, event_log,"
    " idempotency_keys).",
    ["kind"],
    registry=REGISTRY,
)
retention_last_sweep = Gauge(
    "kici_retention_last_sweep_timestamp_seconds",
    "When this process last finished a retention sweep (0: never; another process may hold the duty).",
    registry=REGISTRY,
)
_agents_here = 0
_agents_elsewhere = 0


def set_local_agents(count: int) -> None:
    """Agents registered with this process; ``kici_agents_active`` is these plus those of the other live ones."""
    global _agents_here
    _agents_here = count
    agents_active.set(_agents_here + _agents_elsewhere)


def set_remote_agents(count: int) -> None:
    """Agents connected to the other live processes sharing the database (read by the cluster heartbeat)."""
    global _agents_elsewhere
    _agents_elsewhere = count
    agents_active.set(_agents_here + _agents_elsewhere)


for _status in ("pending", "dispatched"):
    dispatch_queue_depth.labels(status=_status).set(0)
platform_connection_status.set(0)


SUMMED_TYPES = frozenset({"counter", "histogram"})
"""Metric types whose samples add up across processes (gauges stay with the process that owns them)."""
_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


def _sample_key(name: str, labels: Mapping[str, str]) -> str:
    return json.dumps([name, sorted(labels.items())], separators=(",", ":"))


def snapshot() -> dict[str, float]:
    """This process's counter and histogram samples, keyed by sample name and labels (JSON-serialisable).

    Processing child processes hand these to the serving process, whose :func:`render` adds them to its own."""
    return {
        _sample_key(s.name, s.labels): s.value
        for family in REGISTRY.collect()
        if family.type in SUMMED_TYPES
        for s in family.samples
    }


class _Merged:
    """A collector yielding this process's families with other processes' counter and histogram samples added."""

    def __init__(self, extra: Mapping[str, float]) -> None:
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        extra = dict(self._extra)
        for family in REGISTRY.collect():
            if family.type not in SUMMED_TYPES:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                value = s.value + extra.pop(_sample_key(s.name, s.labels), 0.0)
                merged.add_sample(s.name, s.labels, value, s.timestamp, s.exemplar)
            names = {family.name + suffix for suffix in _SUFFIXES}
            for key in [k for k in extra if json.loads(k)[0] in names]:  # label sets only others have seen
                name, labels = json.loads(key)
                merged.add_sample(name, dict(labels), extra.pop(key))
            yield merged


def render(extra: Iterable[Mapping[str, float]] = ()) -> bytes:
    """The Prometheus text exposition of every metric in :data:`REGISTRY`, with the counter and histogram
    samples of ``extra`` (other processes' :func:`snapshot`) added to this process's."""
    total: dict[str, float] = {}
    for snap in extra:
        for key, value in snap.items():
            total[key] = total.get(key, 0.0) + float(value)
    if not total:
        return generate_latest(REGISTRY)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Merged(total))
    return generate_latest(merged)
