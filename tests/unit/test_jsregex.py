"""The merged JavaScript regex translator: rules beyond those tested through globs and routing."""

from __future__ import annotations

import pytest

from kici_core import globs, jsregex, routing


@pytest.mark.parametrize(
    ("source", "flags", "candidate", "expected"),
    [
        ("^[\\D]$", "", "٣", True),  # a non-ASCII digit is not \d in JS
        ("^[^\\D]$", "", "٣", False),
        ("^[^\\D]$", "", "7", True),
        ("^[a\\W]$", "", "-", True),
        ("^[a\\W]$", "", "b", False),
        ("^[^a\\W]$", "", "b", True),
        ("^[^a\\W]$", "", "a", False),
        ("^[^a\\W]$", "", "-", False),
        ("\\bé", "", "éé", False),  # \b is ASCII: é is not a word character
        ("x\\bé", "", "xé", True),
        ("^\\s$", "", "\ufeff", True),  # JS whitespace includes the BOM
        ("^\\s$", "", "\x1c", False),
        ("^\\cA$", "", "\x01", True),
        ("^\\p{L}$", "", "p{L}", True),  # without u, \p is the letter p
        ("é", "i", "É", True),
        ("a.b", "", "a\u2028b", False),
    ],
)
def test_js_semantics(source: str, flags: str, candidate: str, expected: bool) -> None:
    assert jsregex.js_regex_search(source, flags, candidate) is expected


def test_unicode_property_escapes_are_refused() -> None:
    with pytest.raises(jsregex.PatternError, match="invalid regex /\\\\p\\{L\\}/u"):
        jsregex.compile_js_regex("\\p{L}", "u")


def test_one_translator_serves_globs_and_routing() -> None:
    assert globs.compile_js_regex is jsregex.compile_js_regex
    assert routing.compile_js_regex is jsregex.compile_js_regex
    assert globs.PatternError is jsregex.PatternError
