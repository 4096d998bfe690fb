"""Property tests for globs and trigger matching."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import globs
from kici_core import matching as m
from kici_core import triggers as t
from kici_core.events import NormalisedEvent
from tests.support.props import examples

# Plain path-like strings: no glob metacharacters, no leading "!", no dot segments.
_SEGMENT = st.text(alphabet="abcxyz019_-", min_size=1, max_size=6)
PLAIN = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)
PATH_GLOBS = st.sampled_from(["src/**", "**/*.md", "docs/*", "*.json", "a/**/c", "**", "x?z/*", "{src,lib}/**"])
FILES = st.lists(PLAIN, max_size=8)
SETTINGS = settings(max_examples=examples(40), deadline=None)


@SETTINGS
@given(PLAIN, PLAIN)
def test_plain_glob_matches_exactly_itself(pattern: str, other: str) -> None:
    assert globs.glob_match(pattern, pattern)
    assert globs.glob_match(pattern, other) is (pattern == other or other == pattern + "/")


def push_with(paths: list[str]) -> t.Trigger:
    return t.parse_trigger({"_type": "push", "paths": paths})


def event(files: list[str]) -> NormalisedEvent:
    return NormalisedEvent(type="push", target_branch="main", changed_files=tuple(files))


@SETTINGS
@given(st.lists(PATH_GLOBS, max_size=3), st.lists(PATH_GLOBS, max_size=2), PATH_GLOBS, FILES)
def test_adding_an_include_never_loses_a_match(inc: list[str], exc: list[str], extra: str, files: list[str]) -> None:
    paths = inc + ["!" + e for e in exc]
    if not inc:
        return  # with no includes the filter is "anything not excluded": adding one narrows it
    before = m.trigger_matches(push_with(paths), event(files))
    after = m.trigger_matches(push_with([*paths, extra]), event(files))
    assert not before or after


@SETTINGS
@given(st.lists(PATH_GLOBS, min_size=1, max_size=3), st.lists(PATH_GLOBS, max_size=2), PATH_GLOBS, FILES)
def test_adding_an_exclusion_never_creates_a_match(
    inc: list[str], exc: list[str], extra: str, files: list[str]
) -> None:
    paths = inc + ["!" + e for e in exc]
    before = m.trigger_matches(push_with(paths), event(files))
    after = m.trigger_matches(push_with([*paths, "!" + extra]), event(files))
    assert before or not after


BRANCH_PATTERNS = st.lists(
    st.one_of(
        st.builds(
            lambda p: {"type": "glob", "pattern": p}, st.sampled_from(["main", "release/*", "!wip", "feat-*", "**"])
        ),
        st.builds(lambda p: {"type": "regex", "pattern": p}, st.sampled_from(["^v\\d", "x$", "main"])),
    ),
    max_size=4,
)


@SETTINGS
@given(BRANCH_PATTERNS, FILES, st.sampled_from(["push", "tag", "pull_request"]), PLAIN)
def test_matching_is_deterministic(branches: list[dict[str, str]], files: list[str], etype: str, branch: str) -> None:
    raw = {"_type": "push", "branches": branches, "paths": ["src/**"] if files else []}
    e = NormalisedEvent(type=etype, target_branch=branch, changed_files=tuple(files))
    first = m.trigger_matches(t.parse_trigger(raw), e)
    assert m.trigger_matches(t.parse_trigger(raw), e) is first
    trig = t.parse_trigger(raw)
    assert [m.trigger_matches(trig, e) for _ in range(3)] == [first] * 3
    decision = m.explain_trigger(trig, e)
    assert decision.matched is first  # the trace agrees with the fast path


@SETTINGS
@given(st.lists(PATH_GLOBS, min_size=1, max_size=4), FILES)
def test_combined_glob_list_equals_any(patterns: list[str], files: list[str]) -> None:
    combined = globs.compile_glob_list(tuple(patterns))
    assert combined is not None
    for f in files:
        assert (combined.fullmatch(f) is not None) is any(globs.glob_match(p, f) for p in patterns)
