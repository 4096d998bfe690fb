"""Lock-file parsing: the spec examples, field handling and matrix expansion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import lockfile, triggers
from kici_core.lockfile_matrix import StaticMatrix, expand_matrix
from tests.support.lockfile_docs import doc, job
from tests.support.props import examples

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lockfiles"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


# --- the spec's examples ------------------------------------------------------------------------


def test_example_a_parses_core_fields() -> None:
    lf = lockfile.parse_lockfile((FIXTURES / "example_a_ci.json").read_bytes())
    assert lf.schema_version == 29
    assert lf.source == lockfile.SourceRef(file=".kici/workflows/ci.ts", export="#default")
    assert lf.lockfile_hash is None
    (wf,) = lf.workflows
    assert wf.name == "ci" and wf.compile_schema_version == 5
    assert [t.kind for t in wf.triggers] == ["pr", "push"]
    assert all(isinstance(t, triggers.PrTrigger | triggers.PushTrigger) for t in wf.triggers)
    lint, test = wf.jobs
    assert lint.needs == ()
    assert test.needs == (lockfile.Need(name="lint", run_on=frozenset({"success"})),)
    assert test.timeout_ms == 1_800_000
    assert dict(test.env) == {"CI": "true"}
    assert [dict(m) for m in test.runs_on] == [
        {"kind": "exact", "value": "kici:os:linux"},
        {"kind": "exact", "value": "docker"},
    ]
    assert test.step_names == ("install", "test")
    assert test.steps[1]["retry"] == {
        "maxAttempts": 2,
        "delayMs": 1000,
        "backoff": "fixed",
        "maxDelayMs": 1000,
    }
    assert test.matrix is None and test.supported


def test_example_b_matrix_and_extended_fields() -> None:
    lf = lockfile.parse_lockfile((FIXTURES / "example_b_release.json").read_text())
    wf = lf.workflow("release")
    assert lf.lockfile_hash is not None and wf.timeout_ms == 3_600_000
    build = wf.job("build")
    assert build.matrix is not None
    assert [c.name for c in build.matrix] == [
        "build (x64, linux)",
        "build (arm64, linux)",
        "build (arm64, macos)",
    ]
    assert dict(build.matrix[2].values) == {"arch": "arm64", "os": "macos"}
    assert build.runs_on_pick == "any"
    assert [dict(m) for m in build.exclude_labels] == [{"kind": "regex", "source": ".*-canary$", "flags": ""}]
    assert build.step_names == ("lint", "typecheck", "compile")
    publish = wf.job("publish")
    assert publish.unsupported_reason == "approval gates are not supported"
    notify = wf.job("notify")
    assert notify.needs[0].run_on == frozenset(lockfile.TERMINAL_JOB_STATUSES)
    assert wf.raw["concurrency"] == {"hasGroup": True, "cancelInProgress": False}


def test_example_c_dynamic_job_is_kept_and_unsupported() -> None:
    lf = lockfile.parse_lockfile(load("example_c_global.json"))
    wf = lf.workflows[0]
    dyn = wf.jobs[1]
    assert dyn.kind == "dynamic" and dyn.name == "dynamic:per-package" and dyn.group == "per-package"
    assert not dyn.supported and "dynamic job generators" in (dyn.unsupported_reason or "")
    assert [t.kind for t in wf.triggers] == ["push", "schedule", "kici_event", "webhook"]


def test_unknown_fields_are_ignored_but_kept_read_only() -> None:
    lf = lockfile.parse_lockfile(load("run_steps_matrix.json"))
    wf = lf.workflows[0]
    assert wf.raw["futureWorkflowField"] == {"anything": (1, 2, 3)}
    assert isinstance(wf.triggers[1], triggers.UnknownTrigger)
    step = wf.job("prepare").steps[0]
    assert step["run"] == "make fetch" and step["futureStepField"] == 7
    assert step["env"] == {"MODE": "ci"} and step["workingDirectory"] == "tools"
    with pytest.raises(TypeError):
        step["run"] = "rm -rf /"  # type: ignore[index]
    assert (
        lockfile.thaw(step)
        == json.loads(json.dumps(load("run_steps_matrix.json")))["workflows"][0]["jobs"][0]["steps"][0]
    )
    regex = wf.job("test").runs_on[0]
    assert regex["flags"] == ""  # filled in when a hand-written file omits it


def test_parse_trigger_is_reexported() -> None:
    assert lockfile.parse_trigger is triggers.parse_trigger
    assert lockfile.Trigger is triggers.Trigger


def test_input_forms_agree() -> None:
    data = load("example_a_ci.json")
    text = json.dumps(data)
    assert lockfile.parse_lockfile(text) == lockfile.parse_lockfile(text.encode())
    assert lockfile.parse_lockfile(data).workflow_names == ("ci",)


def test_optional_informational_fields_default() -> None:
    data = doc()
    del data["source"], data["contentHash"]
    wf = data["workflows"][0]
    del wf["contentHash"], wf["compileSchemaVersion"], wf["jobs"][0]["needs"], wf["jobs"][0]["runsOn"]
    wf["description"] = None
    lf = lockfile.parse_lockfile(data)
    assert lf.source == lockfile.SourceRef(file=".kici/workflows", export="#default")
    assert lf.workflows[0].content_hash == "" and lf.workflows[0].description is None
    assert lf.workflows[0].jobs[0].needs == () and lf.workflows[0].jobs[0].runs_on == ()


def test_integral_float_schema_version_and_null_trigger() -> None:
    data = doc()
    data["schemaVersion"] = 29.0
    data["workflows"][0]["triggers"] = [None]
    lf = lockfile.parse_lockfile(data)
    assert isinstance(lf.workflows[0].triggers[0], triggers.UnknownTrigger)


def test_dynamic_matrix_and_inline_env_are_unsupported() -> None:
    lf = lockfile.parse_lockfile(
        doc(
            job("a", matrix={"_type": "dynamic", "source": {"file": "x.ts", "jobName": "a"}}),
            job("b", env={"_type": "inline", "expression": "() => ({})"}),
            job("c", runsOnAll={"include": [[{"kind": "exact", "value": "gpu"}]], "exclude": []}),
        )
    )
    a, b, c = lf.workflows[0].jobs
    assert a.unsupported_reason == "dynamic matrices are not supported"
    assert "JavaScript" in (b.unsupported_reason or "")
    assert "runsOnAll" in (c.unsupported_reason or "")


def test_workflow_approval_is_unsupported() -> None:
    lf = lockfile.parse_lockfile(doc(approval={"clauses": [], "when": "always"}))
    assert lf.workflows[0].unsupported_reason is not None


def test_group_needs_resolve_to_dynamic_generator() -> None:
    lf = lockfile.parse_lockfile(
        doc(
            {"_type": "dynamic", "source": {"file": "x.ts", "index": 3}, "group": "pkgs"},
            job("after", needs=[{"group": "pkgs", "runOn": ["success"]}]),
            {"_type": "dynamic", "source": {"file": "x.ts", "index": 4}},
        )
    )
    assert [j.name for j in lf.workflows[0].jobs] == ["dynamic:pkgs", "after", "dynamic:4"]


# --- matrix expansion ------------------------------------------------------------------------------


def matrix(dims: dict[str, list[str]], *, include: Any = (), exclude: Any = ()) -> StaticMatrix:
    return StaticMatrix(
        dimensions={k: tuple(v) for k, v in dims.items()},
        array_form=False,
        include=tuple(include),
        exclude=tuple(exclude),
    )


def test_matrix_array_form_names_by_value() -> None:
    lf = lockfile.parse_lockfile(doc(job("t", matrix={"_type": "static", "values": ["18", "20"]})))
    children = lf.workflows[0].jobs[0].matrix
    assert children is not None
    assert [(c.name, dict(c.values)) for c in children] == [
        ("t (18)", {"value": "18"}),
        ("t (20)", {"value": "20"}),
    ]


def test_matrix_include_adds_only_new_and_ignores_empty() -> None:
    children, err = expand_matrix(
        "t",
        matrix(
            {"os": ["linux"], "py": ["3.12"]},
            include=[{"os": "linux", "py": "3.12"}, {}, {"os": "win", "py": "3.11"}],
            exclude=[{}],
        ),
    )
    assert err is None
    assert [c.name for c in children] == ["t (linux, 3.12)", "t (win, 3.11)"]


def test_matrix_exclude_matches_on_all_entry_keys() -> None:
    children, _ = expand_matrix(
        "t",
        matrix({"os": ["linux", "mac"], "py": ["1", "2"]}, exclude=[{"os": "mac"}, {"py": "1", "os": "linux"}]),
    )
    assert [c.name for c in children] == ["t (linux, 2)"]


@pytest.mark.parametrize(
    ("dims", "exclude", "reason"),
    [
        ({"os": []}, [], "zero combinations"),
        ({"os": ["a"]}, [{"os": "a"}], "zero combinations"),
        ({"a": [str(i) for i in range(17)], "b": [str(i) for i in range(16)]}, [], "272 combinations"),
        ({k: [str(i) for i in range(10)] for k in "abcde"}, [], "before exclude"),
    ],
)
def test_matrix_size_errors_fail_the_job_not_the_file(dims: Any, exclude: Any, reason: str) -> None:
    lf = lockfile.parse_lockfile(doc(job("t", matrix={"_type": "static", "values": dims}, exclude=exclude)))
    t = lf.workflows[0].jobs[0]
    assert t.matrix is None and reason in (t.matrix_error or "")


@settings(max_examples=examples(60), deadline=None)
@given(
    dims=st.dictionaries(
        st.sampled_from(["os", "py", "arch", "node"]),
        st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True),
        min_size=1,
        max_size=3,
    ),
    data=st.data(),
)
def test_matrix_expansion_properties(dims: dict[str, list[str]], data: st.DataObject) -> None:
    names = sorted(dims)
    entry = st.dictionaries(st.sampled_from(names), st.sampled_from(["a", "b", "c", "d"]), max_size=len(names))
    exclude = data.draw(st.lists(entry, max_size=3))
    include = data.draw(st.lists(entry, max_size=3))
    children, err = expand_matrix("j", matrix(dims, include=include, exclude=exclude))
    if err is not None:
        assert children == () and "zero" in err
        return
    combos = [dict(c.values) for c in children]
    assert len({tuple(sorted(c.items())) for c in combos}) == len(combos)  # no duplicates
    for inc in include:
        assert not inc or inc in combos
    for combo in combos:
        if set(combo) == set(names) and combo not in include:
            assert list(combo) == names  # product combos keep sorted dimension order
            assert not any(e and all(combo.get(k) == v for k, v in e.items()) for e in exclude)
