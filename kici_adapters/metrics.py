"""Prometheus metrics: one registry per process, every ``kici_*`` series the deploy guide names.

Adapters and runtimes import this module and call the metric objects directly; nothing here touches the
network. ``render()`` produces the text exposition for ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
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
lockfile_cache_hits = Counter(
    "kici_lockfile_cache_hits_total", "Lock-file cache hits.", registry=REGISTRY
)
lockfile_cache_misses = Counter(
    "kici_lockfile_cache_misses_total", "Lock-file cache misses (a fetch was attempted).", registry=REGISTRY
)
agents_active = Gauge(
    "kici_agents_active", "Agents registered and connected to this process.", registry=REGISTRY
)
dispatch_queue_depth = Gauge(
    "kici_dispatch_queue_depth", "Dispatch queue entries by status.", ["status"], registry=REGISTRY
)
jobs_dispatched = Counter(
    "kici_jobs_dispatched_total", "job.dispatch messages sent to agents.", registry=REGISTRY
)
platform_connection_status = Gauge(
    "kici_platform_connection_status",
    "1 while the Platform relay connection is authenticated, else 0.",
    registry=REGISTRY,
)
dedup_hits = Counter(
    "kici_dedup_hits_total", "Deliveries suppressed as duplicates.", registry=REGISTRY
)

# --- what operators need beyond the guide --------------------------------------------------------
processing_failures = Counter(
    "kici_processing_failures_total",
    "Deliveries whose processing failed, by reason.",
    ["reason"],
    registry=REGISTRY,
)
inbox_depth = Gauge(
    "kici_inbox_depth", "Accepted deliveries not yet processed.", registry=REGISTRY
)
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
platform_buffer_dropped = Counter(
    "kici_platform_buffer_dropped_total",
    "Outbound Platform messages dropped because the buffer was full.",
    registry=REGISTRY,
)

for _status in ("pending", "dispatched"):
    dispatch_queue_depth.labels(status=_status).set(0)
platform_connection_status.set(0)


def render() -> bytes:
    """The Prometheus text exposition of every metric in :data:`REGISTRY`."""
    return generate_latest(REGISTRY)
