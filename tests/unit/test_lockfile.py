"""Lock-file parsing: the spec examples, field handling, and one test per validation error."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import lockfile, triggers
from kici_core.errors import LockfileError
from kici_core.lockfile_matrix import StaticMatrix, expand_matrix
from tests.support.props import examples

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "lockfiles"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def job(name: str = "build", **extra: Any) -> dict[str, Any]:
    return {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "exact", "value": "kici:os:linux"}],
        "needs": [],
        "steps": [{"name": "step-1", "hasOutputs": False}],
        **extra,
    }


def doc(*jobs: dict[str, Any], **workflow_extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 29,
        "source": {"file": ".kici/workflows/ci.ts", "export": "#default"},
        "contentHash": "0" * 64,
        "workflows": [
            {
                "name": "ci",
                "contentHash": "",
                "compileSchemaVersion": 0,
                "triggers": [],
                "jobs": list(jobs) or [job()],
                **workflow_extra,
            }
        ],
    }


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


@settings(max_examples=examples(150), deadline=None)
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


# --- validation errors: every one names its JSON path ------------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def _set(path: list[Any], value: Any) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _del(path: list[Any]) -> Mutator:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


W = ["workflows", 0]
J = [*W, "jobs", 0]

ERROR_CASES: list[tuple[str, Mutator, str, str]] = [
    ("schema missing", _del(["schemaVersion"]), "schemaVersion", "missing required field"),
    ("schema string", _set(["schemaVersion"], "29"), "schemaVersion", "expected a number"),
    ("schema old", _set(["schemaVersion"], 28), "schemaVersion", "recompile"),
    ("schema new", _set(["schemaVersion"], 30), "schemaVersion", "version 30"),
    ("top source", _set(["source"], "ci.ts"), "source", "expected an object, got string"),
    ("top hash", _set(["contentHash"], 5), "contentHash", "expected a string"),
    ("workflows missing", _del(["workflows"]), "workflows", "missing required field"),
    ("workflows object", _set(["workflows"], {}), "workflows", "expected an array"),
    ("workflow string", _set(W, "ci"), "workflows[0]", "expected an object"),
    ("workflow name", _del([*W, "name"]), "workflows[0].name", "missing required field"),
    ("workflow name empty", _set([*W, "name"], ""), "workflows[0].name", "must not be empty"),
    ("triggers", _set([*W, "triggers"], {}), "workflows[0].triggers", "expected an array"),
    ("trigger item", _set([*W, "triggers"], [5]), "workflows[0].triggers[0]", "expected an object"),
    ("jobs missing", _del([*W, "jobs"]), "workflows[0].jobs", "missing required field"),
    ("wf timeout", _set([*W, "timeout"], 1.5), "workflows[0].timeout", "expected an integer"),
    ("wf csv bool", _set([*W, "compileSchemaVersion"], True), "workflows[0].compileSchemaVersion", "integer"),
    ("wf source file", _set([*W, "source"], {"export": "#x"}), "workflows[0].source.file", "missing"),
    ("wf rules", _set([*W, "rules"], {}), "workflows[0].rules", "expected an array"),
    ("job type", _del([*J, "_type"]), "workflows[0].jobs[0]._type", "missing required field"),
    ("job type bad", _set([*J, "_type"], "matrix"), "workflows[0].jobs[0]._type", 'unknown value "matrix"'),
    ("job name", _set([*J, "name"], 3), "workflows[0].jobs[0].name", "expected a string"),
    ("steps missing", _del([*J, "steps"]), "workflows[0].jobs[0].steps", "missing required field"),
    (
        "step name",
        _set([*J, "steps", 0], {"hasOutputs": False}),
        "workflows[0].jobs[0].steps[0].name",
        "missing",
    ),
    (
        "step run",
        _set([*J, "steps", 0, "run"], ["ls"]),
        "workflows[0].jobs[0].steps[0].run",
        "expected a string",
    ),
    ("step env", _set([*J, "steps", 0, "env"], {"A": 1}), "workflows[0].jobs[0].steps[0].env.A", "string"),
    (
        "step coe",
        _set([*J, "steps", 0, "continueOnError"], "y"),
        "workflows[0].jobs[0].steps[0].continueOnError",
        "boolean",
    ),
    (
        "step timeout",
        _set([*J, "steps", 0, "timeout"], -1),
        "workflows[0].jobs[0].steps[0].timeout",
        "at least 0",
    ),
    (
        "step kind",
        _set([*J, "steps", 0, "kind"], "loop"),
        "workflows[0].jobs[0].steps[0].kind",
        "unknown value",
    ),
    (
        "nested parallel",
        _set(
            [*J, "steps", 0],
            {
                "kind": "parallel",
                "name": "p",
                "failFast": True,
                "children": [{"kind": "parallel", "name": "q", "children": []}],
            },
        ),
        "workflows[0].jobs[0].steps[0].children[0].kind",
        "cannot be nested",
    ),
    (
        "parallel children",
        _set([*J, "steps", 0], {"kind": "parallel", "name": "p"}),
        "workflows[0].jobs[0].steps[0].children",
        "missing",
    ),
    ("needs object", _set([*J, "needs"], {"a": 1}), "workflows[0].jobs[0].needs", "expected an array"),
    ("needs unknown", _set([*J, "needs"], ["tset"]), "workflows[0].jobs[0].needs[0]", 'unknown job "tset"'),
    (
        "needs group",
        _set([*J, "needs"], [{"group": "g", "runOn": ["success"]}]),
        "workflows[0].jobs[0].needs[0]",
        'unknown dynamic group "g"',
    ),
    (
        "needs both",
        _set([*J, "needs"], [{"name": "a", "group": "g"}]),
        "workflows[0].jobs[0].needs[0]",
        "exactly one",
    ),
    (
        "needs self",
        _set([*J, "needs"], ["build"]),
        "workflows[0].jobs[0].needs",
        "needs cycle: build -> build",
    ),
    (
        "runOn empty",
        _set([*J, "needs"], [{"name": "x", "runOn": []}]),
        "workflows[0].jobs[0].needs[0].runOn",
        "at least one",
    ),
    (
        "runOn status",
        _set([*J, "needs"], [{"name": "x", "runOn": ["done"]}]),
        "workflows[0].jobs[0].needs[0].runOn[0]",
        'unknown value "done"',
    ),
    ("matcher string", _set([*J, "runsOn"], ["linux"]), "workflows[0].jobs[0].runsOn[0]", "old format"),
    (
        "matcher kind",
        _set([*J, "runsOn", 0, "kind"], "glob"),
        "workflows[0].jobs[0].runsOn[0].kind",
        "unknown value",
    ),
    (
        "matcher value",
        _set([*J, "runsOn", 0], {"kind": "exact"}),
        "workflows[0].jobs[0].runsOn[0].value",
        "missing",
    ),
    (
        "matcher flags",
        _set([*J, "runsOn", 0], {"kind": "regex", "source": "x", "flags": "q"}),
        "workflows[0].jobs[0].runsOn[0].flags",
        "invalid",
    ),
    (
        "exclude matcher",
        _set([*J, "excludeLabels"], [{"kind": "regex"}]),
        "workflows[0].jobs[0].excludeLabels[0].source",
        "missing",
    ),
    (
        "runsOnAll matcher",
        _set([*J, "runsOnAll"], {"include": [[{"kind": "exact", "value": "a"}, "b"]]}),
        "workflows[0].jobs[0].runsOnAll.include[0][1]",
        "old format",
    ),
    ("pick", _set([*J, "runsOnPick"], "random"), "workflows[0].jobs[0].runsOnPick", "unknown value"),
    ("job timeout", _set([*J, "timeout"], "1h"), "workflows[0].jobs[0].timeout", "expected an integer"),
    ("grace", _set([*J, "gracePeriod"], "5"), "workflows[0].jobs[0].gracePeriod", "expected a number"),
    ("checkout", _set([*J, "checkout"], "no"), "workflows[0].jobs[0].checkout", "boolean"),
    ("maxParallel", _set([*J, "maxParallel"], 0), "workflows[0].jobs[0].maxParallel", "at least 1"),
    ("env value", _set([*J, "env"], {"A": True}), "workflows[0].jobs[0].env.A", "expected a string"),
    (
        "container image",
        _set([*J, "container"], {"env": {}}),
        "workflows[0].jobs[0].container.image",
        "missing",
    ),
    (
        "matrix type",
        _set([*J, "matrix"], {"_type": "static-ish"}),
        "workflows[0].jobs[0].matrix._type",
        "unknown value",
    ),
    (
        "matrix values",
        _set([*J, "matrix"], {"_type": "static"}),
        "workflows[0].jobs[0].matrix.values",
        "missing",
    ),
    (
        "matrix dim",
        _set([*J, "matrix"], {"_type": "static", "values": {"os": "linux"}}),
        "workflows[0].jobs[0].matrix.values.os",
        "array",
    ),
    (
        "matrix number",
        _set([*J, "matrix"], {"_type": "static", "values": [18]}),
        "workflows[0].jobs[0].matrix.values[0]",
        "string",
    ),
    (
        "include value",
        _set([*J, "include"], [{"os": 1}]),
        "workflows[0].jobs[0].include[0].os",
        "expected a string",
    ),
    ("exclude entry", _set([*J, "exclude"], ["x"]), "workflows[0].jobs[0].exclude[0]", "expected an object"),
    (
        "dynamic source",
        _set([*J], {"_type": "dynamic", "source": {"index": 1}}),
        "workflows[0].jobs[0].source.file",
        "missing",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_validation_error_names_path(mutate: Mutator, path: str, reason: str) -> None:
    data = doc()
    mutate(data)
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(copy.deepcopy(data))
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}: ")


def test_trigger_errors_carry_their_path() -> None:
    data = doc()
    data["workflows"][0]["triggers"] = [
        {"_type": "push", "branches": [], "paths": []},
        {"_type": "push", "branches": "main", "paths": []},
    ]
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert info.value.path.startswith("workflows[0].triggers[1]")


def test_unknown_needs_name_in_a_later_workflow() -> None:
    data = doc()
    second = copy.deepcopy(data["workflows"][0])
    second["name"] = "other"
    second["jobs"] = [job("test"), job("deploy", needs=["test", {"name": "tset", "runOn": ["success"]}])]
    data["workflows"] += [second, copy.deepcopy(second) | {"name": "third"}]
    data["workflows"][2]["jobs"][1]["needs"][1] = "tset"
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert str(info.value) == 'workflows[1].jobs[1].needs[1]: unknown job "tset"'


def test_needs_cycle_is_named() -> None:
    data = doc(job("a", needs=["c"]), job("b", needs=["a"]), job("c", needs=[{"name": "b", "runOn": ["failed"]}]))
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert info.value.path == "workflows[0].jobs[0].needs"
    assert info.value.reason == "needs cycle: a -> c -> b -> a"


def test_duplicate_names() -> None:
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(doc(job("a"), job("a")))
    assert (info.value.path, info.value.reason) == ("workflows[0].jobs[1].name", 'duplicate job name "a"')
    data = doc()
    data["workflows"].append(copy.deepcopy(data["workflows"][0]))
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert info.value.path == "workflows[1].name"


def test_expanded_name_collision() -> None:
    data = doc(job("t", matrix={"_type": "static", "values": ["x"]}), job("t (x)"))
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert info.value.path == "workflows[0].jobs[1]" and "t (x)" in info.value.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid JSON"),
        ("", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        ('{"schemaVersion": NaN}', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("29", "must be a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "nested more than 64 levels deep"),
    ],
)
def test_not_json(data: bytes | str, reason: str) -> None:
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert info.value.path == "" and reason in info.value.reason


def test_mapping_input_with_non_json_values() -> None:
    data = doc()
    data["workflows"][0]["jobs"][0]["steps"][0]["extra"] = {1, 2}
    with pytest.raises(LockfileError) as info:
        lockfile.parse_lockfile(data)
    assert info.value.path == "workflows[0].jobs[0].steps[0].extra"
    data["workflows"][0]["jobs"][0]["steps"][0]["extra"] = float("nan")
    with pytest.raises(LockfileError, match="finite"):
        lockfile.parse_lockfile(data)


JSON_LEAF = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=examples(150), deadline=None)
@given(path=st.sampled_from(["", "w", "j", "s", "n"]), key=st.text(max_size=12), value=JSON_ANY)
def test_arbitrary_corruption_raises_only_lockfile_error(path: str, key: str, value: Any) -> None:
    data = doc(job("a"), job("b", needs=["a"]))
    target: Any = {
        "": data,
        "w": data["workflows"][0],
        "j": data["workflows"][0]["jobs"][1],
        "s": data["workflows"][0]["jobs"][1]["steps"][0],
        "n": data["workflows"][0]["jobs"][1]["needs"],
    }[path]
    if isinstance(target, list):
        target.append(value)
    else:
        target[key] = value
    try:
        lockfile.parse_lockfile(data)
    except LockfileError as err:
        assert isinstance(err.path, str) and err.reason
