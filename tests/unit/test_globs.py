"""Glob (picomatch 4) and JavaScript-regex dialects, with the spec's examples (§4.7, §4.8)."""

from __future__ import annotations

from typing import Any

import pytest

from kici_core import globs

GLOB_CASES = [
    # rule 1: whole string, no basename matching, case-sensitive
    ("*.md", "README.md", True),
    ("*.md", "docs/README.md", False),
    ("main", "Main", False),
    # rule 2: equality shortcut
    ("feat(x)", "feat(x)", True),
    # rule 3: candidates are not normalised; one trailing slash tolerated
    ("docs/**", "./docs/a.md", False),
    ("src/*", "src/a/", True),
    # rule 4: * within a segment
    ("feature/*", "feature/", False),
    ("feature/*", "feature/a/b", False),
    ("v*", "v", True),
    ("*", "a\nb", True),
    # rule 5: globstar
    ("a/**", "a", True),
    ("a/**", "a/", True),
    ("a/**", "a/b", True),
    ("a/**", "a/b/c", True),
    ("**/a", "a", True),
    ("**/a", "x/y/a", True),
    ("a/**/c", "a/c", True),
    ("a/**/c", "a/b/c", True),
    ("**", "x/y/z", True),
    ("**", "", False),
    ("a**b", "ax/xb", False),
    ("a**b", "axxb", True),
    # rule 6: ?
    ("v?", "v1", True),
    ("a?b", "a/b", False),
    # rule 7: dot rule
    ("src/**", "src/.env", False),
    ("**/*.md", ".github/README.md", False),
    ("myorg/*", "myorg/.github", False),
    ("*", ".env", False),
    ("?env", ".env", False),
    ("[.]a", ".a", True),
    (".github/**", ".github/workflows/ci.yml", True),
    (".*", ".env", True),
    ("dir/.hidden", "dir/.hidden", True),
    # rule 8: classes
    ("v[0-9]", "v7", True),
    ("v[!0-9]", "v1", True),
    ("v[!0-9]", "va", False),
    ("v[^0-9]", "va", True),
    ("[[:digit:]]x", "1x", True),
    ("[[:alpha:]]", "1", False),
    # rule 9: braces
    ("{a,b}", "b", True),
    ("src/{app,lib}/**", "src/lib/x.ts", True),
    ("*.{js,ts}", "x.ts", True),
    ("v{1..3}", "v2", True),
    ("v{1..3}", "v4", False),
    ("{a}", "{a}", True),
    # rule 10: negation
    ("!main", "main", False),
    ("!main", "dev", True),
    ("!!a", "a", True),
    # rule 11: extglobs
    ("@(a|b)", "a", True),
    ("+(a)", "aaa", True),
    ("!(a|b)", "c", True),
    ("!(a|b)", "a", False),
    ("file?(.txt)", "file", True),
    ("(a|b)", "b", True),
    # rule 12: literals and escapes
    ("a.b", "axb", False),
    ("a+b", "a+b", True),
    ("a\\*", "a*", True),
    ("a\\*", "ab", False),
]


@pytest.mark.parametrize(("pattern", "candidate", "expected"), GLOB_CASES)
def test_glob_rules(pattern: str, candidate: str, expected: bool) -> None:
    assert globs.glob_match(pattern, candidate) is expected


def test_glob_is_compiled_once() -> None:
    assert globs.compile_glob("src/**/x") is globs.compile_glob("src/**/x")


def test_glob_list_is_one_alternation() -> None:
    compiled = globs.compile_glob_list(("main", "release/*"))
    assert compiled is not None
    assert compiled.fullmatch("release/1.0")
    assert compiled.fullmatch("feature/x") is None
    assert globs.compile_glob_list(()) is None


def test_huge_brace_range_is_rejected() -> None:
    with pytest.raises(globs.PatternError):
        globs.compile_glob("{1..100000}")


@pytest.mark.parametrize(
    ("source", "flags", "candidate", "expected"),
    [
        ("^release\\/v\\d+$", "", "release/v12", True),
        ("main", "", "not-main-branch", True),  # search, not match
        ("^main$", "", "main\n", False),  # JS $ without m is the very end
        ("^main$", "m", "x\nmain\ny", True),
        ("MAIN", "i", "main", True),
        ("a.b", "", "a\nb", False),
        ("a.b", "s", "a\nb", True),
        ("\\d", "", "٣", False),  # JS \d is ASCII-only
        ("(?<n>a)\\k<n>", "", "aa", True),
        ("[^]", "", "x", True),
        ("x[]", "", "x", False),
        ("^(?:^(?:kici\\:host\\:box\\-[^/]*?)$)$", "", "kici:host:box-1", True),
        ("^(?:(?!\\.)(?=.)[^/]*?-canary)$", "", "agent-canary", True),
        ("a", "gyu", "a", True),
    ],
)
def test_js_regex(source: str, flags: str, candidate: str, expected: bool) -> None:
    assert globs.js_regex_search(source, flags, candidate) is expected


@pytest.mark.parametrize(("source", "flags"), [("(", ""), ("[a", ""), ("a", "q"), ("a\\", "")])
def test_invalid_js_regex(source: str, flags: str) -> None:
    with pytest.raises(globs.PatternError, match="invalid regex"):
        globs.compile_js_regex(source, flags)


def test_jsonpath_subset() -> None:
    doc: Any = {"env": "prod", "a": {"b": [{"c": 1}, {"c": 2}]}, "x.y": True}
    assert globs.compile_jsonpath("$.env").find(doc) == ["prod"]
    assert globs.compile_jsonpath("env").find(doc) == ["prod"]
    assert globs.compile_jsonpath("$.a.b[1].c").find(doc) == [2]
    assert globs.compile_jsonpath("$.a.b[-1].c").find(doc) == [2]
    assert globs.compile_jsonpath("$.a.b[*].c").find(doc) == [1, 2]
    assert globs.compile_jsonpath("$..c").find(doc) == [1, 2]
    assert globs.compile_jsonpath("$['x.y']").find(doc) == [True]
    assert globs.compile_jsonpath("$.missing").find(doc) == []
    with pytest.raises(globs.PatternError):
        globs.compile_jsonpath("$.a[?(@.c > 1)]")
