"""Globs match in linear time with unchanged meaning.

The reference is the plain glob translation run by Python's backtracking ``re`` (what every glob used before):
on short random globs and candidates, the compiled matcher (``re`` over the backtracking-free rewriting, or the
automaton) and the automaton over the plain translation must both agree with it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kici_core import automaton, globs
from tests.support.props import examples

_GLOB_PIECES = [
    "a",
    "b",
    ".",
    "-",
    "/",
    "*",
    "**",
    "?",
    "[ab]",
    "[^a]",
    "[.a]",
    "{a,b}",
    "@(a|b)",
    "!(a)",
    "+(a)",
    "\\*",
    "x",
    "/**/",
    "[[:punct:]]",
]
GLOBS = st.lists(st.sampled_from(_GLOB_PIECES), min_size=1, max_size=6).map("".join)
CANDIDATES = st.text(alphabet="ab.-/x*", max_size=12)


def reference(pattern: str, candidate: str) -> bool:
    return re.fullmatch(f"(?:{globs.glob_to_regex_source(pattern)})", candidate, re.DOTALL) is not None


@settings(max_examples=examples(100), deadline=None)
@given(GLOBS, st.lists(CANDIDATES, min_size=1, max_size=6), st.booleans())
@example("*-*-z", ["a-b-z", "--z", "-z", "a-z-b-z"], False)
@example("**/a/**/b/**", ["a/b", "x/a/y/b/z", "a/.x/b", "a/b/.c", ".a/a/b"], False)
@example("**/.a/**", ["x/.a/y", ".a", "x/.a/.a/y"], False)
@example("a/**//**/b", ["a//b", "a/x//y/b"], False)
@example("**/**{a,b}[ab]***/**", ["bb.", "x/ab/y"], False)
def test_compiled_globs_agree_with_the_backtracking_translation(
    pattern: str, candidates: list[str], negate: bool
) -> None:
    if negate:
        pattern = "!" + pattern
    try:
        compiled = globs.compile_glob(pattern)
    except globs.PatternError:
        return
    plain = automaton.compile_fullmatch(f"(?:{globs.glob_to_regex_source(pattern)})")
    for cand in candidates:
        expected = reference(pattern, cand)
        assert (compiled.fullmatch(cand) is not None) is expected, (pattern, cand)
        assert (plain.fullmatch(cand) is not None) is expected, (pattern, cand)


@settings(max_examples=examples(50), deadline=None)
@given(st.lists(GLOBS, min_size=1, max_size=3), st.lists(GLOBS, max_size=2), st.lists(CANDIDATES, max_size=6))
def test_path_filters_agree_with_the_backtracking_translation(
    include: list[str], exclude: list[str], files: list[str]
) -> None:
    try:
        wanted = globs.compile_path_filter(tuple(include), tuple(exclude))
    except globs.PatternError:
        return
    for f in files:
        expected = any(reference(p, f) for p in include) and not any(reference(p, f) for p in exclude)
        assert (wanted.fullmatch(f) is not None) is expected, (include, exclude, f)


# Patterns that made the backtracking translation take seconds to hours on these candidates.
HOSTILE = [
    ("*-*-*-*-*-z", "-" * 255),
    ("*a*a*a*a*a*b", "a" * 3000),
    ("**/a/**/a/**/a/**/b", "a/" * 2000),
    ("**/x/**", "x/" * 2000 + ".y"),
    ("@(a|aa)*-*-*-*-z", "a" + "-" * 2000),
    ("+(a|aa)x", "a" * 3000),
    ("!(a)*-*-*-*-z", "-" * 2000),
    ("*(*(a))b", "a" * 3000),
]


@pytest.mark.parametrize(("pattern", "candidate"), HOSTILE)
def test_hostile_globs_are_matched_without_backtracking(pattern: str, candidate: str) -> None:
    # Linear time, counted rather than timed: the automaton creates at most one state per character read, and
    # a pattern compiled for re is one the rewriting proved backtracking-free. Either way the answer must be
    # that of the glob's meaning (none of these candidates match).
    compiled = globs.compile_glob(pattern)
    assert compiled.fullmatch(candidate) is None
    if isinstance(compiled, automaton.Automaton):
        assert compiled.states_built <= 2 * len(candidate) + 2


def test_automaton_matches_only_whole_strings() -> None:
    m = automaton.compile_fullmatch("(?:a[^/]*?b)")
    assert m.fullmatch("axxb") and m.fullmatch("ab")
    assert m.fullmatch("axxbc") is None and m.fullmatch("a/b") is None
    with pytest.raises(globs.PatternError):
        automaton.compile_fullmatch("(?<=a)b")


def test_deeply_nested_globs_are_rejected() -> None:
    with pytest.raises(globs.PatternError, match="nests"):
        globs.compile_glob("@(" * 600 + "a" + ")" * 600)
    with pytest.raises(globs.PatternError, match="nests"):
        globs.compile_glob("{a," * 600 + "b" + "}" * 600)
