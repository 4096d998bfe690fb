"""Plain key lookups shared by events, dedup and trigger checks."""

from __future__ import annotations

import pytest

from kici_core import jsonpath


def test_get_in_follows_object_keys_only() -> None:
    doc = {"a": {"b": [1]}, "n": None}
    assert jsonpath.get_in(doc, ("a", "b")) == [1]
    assert jsonpath.get_in(doc, ("a", "b", "0")) is None  # arrays are not indexed
    assert jsonpath.get_in(doc, ("n", "x")) is None
    assert jsonpath.get_in(doc, ()) is doc


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a.b", "x"), ("$.a.b", "x"), ("$a.b", "x"), (".a.b", "x"), ("a", None), ("a.c", None), ("e", None)],
)
def test_dot_path_returns_non_empty_strings(path: str, expected: str | None) -> None:
    assert jsonpath.dot_path({"a": {"b": "x", "c": 3}, "e": ""}, path) == expected
