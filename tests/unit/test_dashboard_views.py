"""The dashboard's pure parts: terminal colours as text segments, relative links, the job graph, the human
reading of a decision trace, and log sections with the failing line."""

from __future__ import annotations

from kici_runtime.orchestrator.dashboard import ansi, views


def test_sgr_colours_become_fixed_classes_and_reset() -> None:
    assert ansi.segments("\x1b[1;32mok\x1b[0m done") == [("fg2 b", "ok"), ("", " done")]
    assert ansi.segments("\x1b[91;44mx\x1b[39my\x1b[49mz") == [("fg9 bg4", "x"), ("bg4", "y"), ("", "z")]
    assert ansi.segments("\x1b[38;5;196mred\x1b[38;2;0;0;250mblue\x1b[m") == [("fg9", "red"), ("fg4", "blue")]
    assert ansi.segments("\x1b[3;4mi\x1b[23;24mn") == [("i u", "i"), ("", "n")]
    assert ansi.segments("") == []


def test_hostile_sequences_are_dropped_and_text_stays_text() -> None:
    line = "\x1b]8;;javascript:alert(1)\x07click\x1b]8;;\x07 \x1b]0;title\x1b\\<b>x</b>\x1b[2J\x07\x00"
    assert ansi.segments(line) == [("", "click <b>x</b>")]
    # parameters cannot smuggle a class name: only the fixed vocabulary is produced
    assert ansi.segments('\x1b[1;"onmouseover=alert(1)mX') == [("", "nmouseover=alert(1)mX")]
    assert ansi.segments("\x1b[999;38;5;300mX") == [("", "X")]
    assert ansi.plain("\x1b[31mred\x1b[0m") == "red"


def test_carriage_returns_keep_what_a_terminal_shows_and_long_lines_are_cut() -> None:
    assert ansi.segments("10%\r50%\r100%") == [("", "100%")]
    assert ansi.segments("done\r\n".rstrip("\n")) == [("", "done")]
    long = ansi.segments("x" * (ansi.MAX_LINE + 50))
    assert len(long[0][1]) == ansi.MAX_LINE + 2


def test_relative_root_of_a_page() -> None:
    assert views.root("") == "./"
    assert views.root("runs") == "./"
    assert views.root("runs/abc") == "../"
    assert views.root("runs/abc/jobs/def") == "../../../"


def test_job_graph_columns_matrix_groups_and_edges() -> None:
    jobs = [
        {"job_id": "1", "job_name": "build", "base_name": "build", "status": "success", "needs": []},
        {
            "job_id": "2",
            "job_name": "test (a)",
            "base_name": "test",
            "status": "success",
            "matrix_values": {"v": "a"},
            "needs": [{"upstreamName": "build"}],
        },
        {
            "job_id": "3",
            "job_name": "test (b)",
            "base_name": "test",
            "status": "failed",
            "matrix_values": {"v": "b"},
            "needs": [{"upstreamName": "build"}],
        },
        {
            "job_id": "4",
            "job_name": "deploy",
            "base_name": "deploy",
            "status": "skipped",
            "needs": [{"upstreamName": "test (a)"}, {"upstreamName": "test (b)"}],
        },
    ]
    graph = views.job_graph(jobs)
    by_name = {g.base_name: g for g in graph.groups}
    assert by_name["build"].x < by_name["test"].x < by_name["deploy"].x
    assert by_name["test"].matrix and [n.label for n in by_name["test"].nodes] == ["(a)", "(b)"]
    assert not by_name["build"].matrix
    assert len(graph.edges) == 2  # build -> test, test -> deploy (one per group pair)
    assert graph.width >= by_name["deploy"].x + views.NODE_W


def test_trace_explains_every_workflow() -> None:
    trace = {
        "decisions": [
            {
                "workflowName": "ci",
                "matched": True,
                "matchedTrigger": 0,
                "summary": "Trigger conditions met",
                "triggers": [],
            },
            {
                "workflowName": "docs",
                "matched": False,
                "matchedTrigger": None,
                "summary": "No matching trigger",
                "triggers": [
                    {
                        "index": 0,
                        "triggerType": "push",
                        "matched": False,
                        "reason": None,
                        "checks": [
                            {"check": "event type", "pattern": "push", "value": "push", "passed": True},
                            {
                                "check": "branches",
                                "pattern": '["docs/**"]',
                                "value": "main",
                                "passed": False,
                                "reason": "no branch pattern matched",
                            },
                        ],
                    }
                ],
            },
        ]
    }
    ci, docs = views.explain_trace(trace) or []
    assert ci.matched and ci.matched_trigger == 0
    assert not docs.matched and docs.triggers[0].failed is not None
    assert (docs.triggers[0].failed.check, docs.triggers[0].failed.value) == ("branches", "main")
    assert views.explain_trace(None) is None and views.explain_trace({"decisions": []}) == []


def test_log_sections_number_lines_across_steps_and_find_the_failure() -> None:
    chunks = [
        {"id": 1, "step_index": None, "content": "checkout"},
        {"id": 2, "step_index": 0, "content": "a\nb"},
        {"id": 5, "step_index": 1, "content": "running\nassert 2 == 3\n"},
    ]
    steps = {
        0: {"step_name": "build", "status": "success", "duration_ms": 1200},
        1: {"step_name": "test", "status": "failed", "duration_ms": 50},
    }
    sections, last = views.log_sections(chunks, steps)
    assert last == 5
    assert [s.title for s in sections] == ["Job output", "Step 1: build", "Step 2: test"]
    assert [line.number for s in sections for line in s.lines] == [1, 2, 3, 4, 5, 6]
    assert views.failure_line(sections) == 5
    assert views.duration(1200) == "1.2s" and views.duration(125_000) == "2m 5s" and views.duration(None) == ""
