"""Lock-file validation: one test per validation error, each naming its JSON path, and corruption fuzzing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import lockfile
from kici_core.errors import LockfileError
from tests.support.lockfile_docs import doc, job
from tests.support.props import examples

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


@settings(max_examples=examples(60), deadline=None)
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
