"""Processing children's counters and histograms are added to the serving process's ``/metrics``."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from kici_adapters import metrics


def _values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_render_adds_other_processes_counters_and_histograms_but_not_gauges() -> None:
    metrics.webhooks_processed.labels(result="matched").inc()
    metrics.trigger_match_duration.observe(0.002)
    mine = _values(metrics.render())
    child = metrics.snapshot()  # this process's own samples stand in for a child's here
    assert child, "counters and histograms are in the snapshot"
    child_only = '["kici_webhooks_processed_total",[["result","lockfile_missing_only_in_child"]]]'
    gauge = '["kici_agents_active",[]]'
    merged = _values(metrics.render([child, {child_only: 3.0, gauge: 50.0}]))

    matched = ("kici_webhooks_processed_total", (("result", "matched"),))
    assert merged[matched] == 2 * mine[matched]
    count = ("kici_trigger_match_duration_seconds_count", ())
    assert merged[count] == 2 * mine[count]
    bucket = ("kici_trigger_match_duration_seconds_bucket", (("le", "+Inf"),))
    assert merged[bucket] == 2 * mine[bucket]
    # a label set only a child has seen is still exposed, under its family
    assert merged[("kici_webhooks_processed_total", (("result", "lockfile_missing_only_in_child"),))] == 3.0
    # gauges belong to the serving process: a child's value is not added
    assert merged[("kici_agents_active", ())] == mine[("kici_agents_active", ())]


def test_render_without_children_is_the_plain_exposition() -> None:
    assert metrics.render() == metrics.render([]) == metrics.render([{}])
