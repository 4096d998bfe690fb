"""Picomatch-compatible globs, the main pattern dialect of lock files.

Globs follow picomatch 4 with default options (see ``docs/triggers.md``): whole-string,
case-sensitive matching; ``*`` and ``?`` never cross ``/``; ``**`` as a whole segment spans
segments; wildcards never match a ``.`` at the start of a segment; ``x/**`` also matches ``x``;
braces, POSIX classes and extglobs are supported; a leading ``!`` negates.

JavaScript regexes live in :mod:`kici_core.jsregex` and the JSONPath subset in
:mod:`kici_core.jsonpath`; their public names (and :class:`PatternError`) are re-exported here.

Every pattern is compiled once (``functools.lru_cache``); lists of globs are combined into one
compiled alternation.

Matching takes time linear in the candidate's length. The plain translation backtracks (``*-*-*-z`` tries every
way to place the dashes), so a glob is compiled for Python's ``re`` only in a rewritten form that cannot
backtrack more than linearly: within a segment, every ``*`` but the last commits to the leftmost place its
following characters fit (an atomic group), and every ``**`` followed by another ``**`` commits to the leftmost
place its following segments fit. Both are exact for globs whose characters never match ``/`` and whose
committed segments cannot match what a ``**`` cannot take (an empty segment or one starting with ``.``). Any
other glob (extglobs and groups, classes that match ``/``, such segments) is matched by the automaton of
:mod:`kici_core.automaton`, built from the plain translation.
"""

from __future__ import annotations

import functools
import re
from typing import Protocol

from kici_core import automaton
from kici_core.jsonpath import JsonPath, compile_jsonpath
from kici_core.jsregex import compile_js_regex, js_regex_search
from kici_core.patterns import PatternError

__all__ = [
    "FullMatcher",
    "JsonPath",
    "PatternError",
    "compile_glob",
    "compile_glob_list",
    "compile_js_regex",
    "compile_jsonpath",
    "compile_path_filter",
    "glob_match",
    "glob_to_regex_source",
    "js_regex_search",
]

_MAX_BRACE_EXPANSIONS = 4096
_MAX_GLOB_NESTING = 32
"""Deepest nesting of braces, parentheses and extglobs in one glob."""


class FullMatcher(Protocol):
    """A compiled glob (or list or path filter): ``fullmatch`` returns something truthy, or None."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, string: str, /) -> object: ...


_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "ascii": "\\x00-\\x7f",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "\\x21-\\x7e",
    "lower": "a-z",
    "print": "\\x20-\\x7e",
    "punct": "\\-!\"#$%&'()\\*+,./:;<=>?@\\[\\\\\\]^_`{|}~",
    "space": " \\t\\r\\n\\v\\f",
    "upper": "A-Z",
    "word": "A-Za-z0-9_",
    "xdigit": "A-Fa-f0-9",
}

_NOT_DOT = r"(?!\.)"
_SEGMENT = r"(?!\.)[^/]++"  # possessive: a segment never gives back characters
_EXTGLOB_CHARS = "@*+?!"


def _find_close(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing ``text[start]`` (nesting-aware, skips escapes), or -1."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _class_end(text: str, start: int) -> int:
    """Index of the ``]`` closing the class opened at ``text[start] == '['``, or -1."""
    i = start + 1
    if i < len(text) and text[i] in "^!":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[" and text.startswith("[:", i):
            end = text.find(":]", i + 2)
            if end != -1:
                i = end + 2
                continue
        if ch == "]":
            return i
        i += 1
    return -1


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside braces, parentheses, classes and escapes."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == "[":
            end = _class_end(text, i)
            if end != -1:
                cur.append(text[i : end + 1])
                i = end + 1
                continue
        if ch in "{(":
            depth += 1
        elif ch in "})" and depth > 0:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$|^([a-zA-Z])\.\.([a-zA-Z])$")


def _range_items(body: str) -> list[str] | None:
    m = _RANGE.match(body)
    if m is None:
        return None
    if m.group(4) is not None:
        a, b = ord(m.group(4)), ord(m.group(5))
        step = 1 if b >= a else -1
        return [re.escape(chr(c)) for c in range(a, b + step, step)]
    lo, hi = int(m.group(1)), int(m.group(2))
    step = abs(int(m.group(3))) if m.group(3) else 1
    step = step or 1
    if abs(hi - lo) // step + 1 > _MAX_BRACE_EXPANSIONS:
        raise PatternError(f"brace range {{{body}}} is too large")
    direction = step if hi >= lo else -step
    return [str(n) for n in range(lo, hi + (1 if direction > 0 else -1), direction)]


def _expand_braces(pattern: str) -> list[str]:
    """Brace expansion: ``a{b,c}`` -> ``[ab, ac]``, ``{1..3}`` -> 1,2,3. Non-brace ``{`` is literal."""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            end = _class_end(pattern, i)
            if end != -1:
                i = end + 1
                continue
        if ch == "{":
            end = _find_close(pattern, i, "{", "}")
            if end == -1:
                # An unclosed brace is literal.
                return _expand_braces(pattern[:i] + "\\" + pattern[i:])
            body = pattern[i + 1 : end]
            items = _split_top(body, ",")
            options = items if len(items) > 1 else _range_items(body)
            if options is None:
                # "{abc}" without a comma or range is literal text.
                escaped = pattern[:i] + "\\{" + body + "\\}"
                return [escaped + rest for rest in _expand_braces(pattern[end + 1 :])]
            prefix, suffix = pattern[:i], pattern[end + 1 :]
            out: list[str] = []
            for option in options:
                out.extend(_expand_braces(prefix + option + suffix))
                if len(out) > _MAX_BRACE_EXPANSIONS:
                    raise PatternError(f"glob {pattern!r} expands to too many alternatives")
            return out
        i += 1
    return [pattern]


def _translate_class(text: str, start: int, end: int) -> str:
    """Translate the bracket expression ``text[start:end+1]`` to a Python class."""
    body = text[start + 1 : end]
    negate = body.startswith("^")
    if negate:
        body = body[1:]
    out: list[str] = []
    i = 0
    members: list[str] = []  # escaped single members, to build ranges
    while i < len(body):
        ch = body[i]
        if ch == "[" and body.startswith("[:", i):
            close = body.find(":]", i + 2)
            if close != -1:
                name = body[i + 2 : close]
                if name not in _POSIX_CLASSES:
                    raise PatternError(f"unknown POSIX class [:{name}:]")
                out.append(_POSIX_CLASSES[name])
                i = close + 2
                continue
        if ch == "\\" and i + 1 < len(body):
            ch = body[i + 1]
            i += 1
        if i + 2 < len(body) and body[i + 1] == "-" and body[i + 2] != "]":
            hi = body[i + 2]
            step = 3
            if hi == "\\" and i + 3 < len(body):
                hi = body[i + 3]
                step = 4
            if ord(hi) < ord(ch):
                raise PatternError(f"bad character range {ch}-{hi}")
            out.append(f"{re.escape(ch)}-{re.escape(hi)}")
            i += step
            continue
        members.append(re.escape(ch) if ch not in "&~|-[" else "\\" + ch)
        out.append(members[-1])
        i += 1
    return "[" + ("^" if negate else "") + "".join(out) + "]"


def _translate_segment_chars(seg: str) -> str:
    """Translate one path segment (no ``/``) of a glob to regex source."""
    out: list[str] = []
    i = 0
    n = len(seg)
    while i < n:
        ch = seg[i]
        at_start = i == 0
        if ch == "\\":
            if i + 1 < n:
                out.append(re.escape(seg[i + 1]))
                i += 2
            else:
                out.append(re.escape("\\"))
                i += 1
            continue
        if ch in _EXTGLOB_CHARS and i + 1 < n and seg[i + 1] == "(":
            close = _find_close(seg, i + 1, "(", ")")
            if close != -1:
                alts = [_translate_segment_chars(a) for a in _split_top(seg[i + 2 : close], "|")]
                group = "(?:" + "|".join(alts) + ")"
                prefix = _NOT_DOT if at_start else ""
                if ch == "@":
                    out.append(prefix + group)
                elif ch == "?":
                    out.append(prefix + group + "?")
                elif ch == "+":
                    out.append(prefix + group + "+")
                elif ch == "*":
                    out.append(prefix + group + "*")
                else:  # "!(...)": anything in this segment except the alternatives
                    out.append(prefix + "(?:(?!" + group + "(?:/|\\Z))[^/]*?)")
                i = close + 1
                continue
        if ch == "(":
            close = _find_close(seg, i, "(", ")")
            if close != -1:
                alts = [_translate_segment_chars(a) for a in _split_top(seg[i + 1 : close], "|")]
                out.append("(?:" + "|".join(alts) + ")")
                i = close + 1
                continue
        if ch == "*":
            while i < n and seg[i] == "*":
                i += 1
            if at_start and i == n:
                out.append(_SEGMENT)
            else:
                out.append((_NOT_DOT if at_start else "") + "[^/]*?")
            continue
        if ch == "?":
            out.append((_NOT_DOT if at_start else "") + "[^/]")
            i += 1
            continue
        if ch == "[":
            end = _class_end(seg, i)
            if end != -1:
                out.append(_translate_class(seg, i, end))
                i = end + 1
                continue
        out.append(re.escape(ch))
        i += 1
    return "".join(out)


def _translate_expanded(pattern: str) -> str:
    """Regex source for one brace-free, non-negated glob; matched with ``fullmatch``."""
    segments = [s for s in _split_top(pattern, "/")]
    # Collapse runs of globstars: "**/**" is the same as "**".
    collapsed: list[str] = []
    for seg in segments:
        if seg == "**" and collapsed and collapsed[-1] == "**":
            continue
        collapsed.append(seg)
    segments = collapsed
    if segments == ["**"]:
        return f"{_SEGMENT}(?:/{_SEGMENT})*/?"
    out: list[str] = []
    last = len(segments) - 1
    for idx, seg in enumerate(segments):
        if seg == "**":
            if idx == 0:
                out.append(f"(?:{_SEGMENT}/)*")
            elif idx == last:
                out.append(f"(?:/{_SEGMENT})*")
            else:
                out.append(f"/(?:{_SEGMENT}/)*")
            continue
        if idx > 0 and segments[idx - 1] != "**":
            out.append("/")
        out.append(_translate_segment_chars(seg))
    return "".join(out) + "/?"


_STAR = None  # a run of "*" in a segment's tokens


def _segment_tokens(seg: str) -> list[tuple[str, bool] | None] | None:
    """One segment as tokens: ``(regex, may_start_with_dot)`` per character, :data:`_STAR` per run of ``*``.
    None when the segment is outside what the rewriting covers (groups, extglobs, a class matching ``/``)."""
    out: list[tuple[str, bool] | None] = []
    i = 0
    n = len(seg)
    while i < n:
        ch = seg[i]
        at_start = i == 0
        if ch == "(" or (ch in _EXTGLOB_CHARS and seg[i + 1 : i + 2] == "("):
            return None
        if ch == "\\":
            lit = seg[i + 1] if i + 1 < n else "\\"
            out.append((re.escape(lit), lit == "."))
            i += 2
            continue
        if ch == "*":
            while i < n and seg[i] == "*":
                i += 1
            out.append(_STAR)
            continue
        if ch == "?":
            out.append(((_NOT_DOT if at_start else "") + "[^/]", False))
            i += 1
            continue
        if ch == "[":
            end = _class_end(seg, i)
            if end != -1:
                cls = _translate_class(seg, i, end)
                try:
                    compiled = re.compile(cls)
                except re.error:
                    return None  # the plain translation reports it
                if compiled.fullmatch("/"):
                    return None
                out.append((cls, compiled.fullmatch(".") is not None))
                i = end + 1
                continue
        out.append((re.escape(ch), ch == "."))
        i += 1
    return out


def _fast_segment(tokens: list[tuple[str, bool] | None]) -> str:
    """Regex of one segment whose stars but the last are atomic (leftmost placement of what follows them)."""
    if tokens == [_STAR]:
        return _SEGMENT
    chunks: list[list[str]] = [[]]
    for tok in tokens:
        if tok is _STAR:
            chunks.append([])
        else:
            chunks[-1].append(tok[0])
    parts = ["".join(c) for c in chunks]
    out = [parts[0]]
    for k, part in enumerate(parts[1:], start=1):
        star = (_NOT_DOT if k == 1 and not parts[0] else "") + "[^/]*?"
        out.append(f"(?>{star}{part})" if k < len(parts) - 1 else star + part)
    return "".join(out)


def _absorbable(tokens: list[tuple[str, bool] | None]) -> bool:
    """True when the segment can match only what a ``**`` can take: a non-empty segment not starting with ``.``."""
    if not tokens:
        return False
    first = tokens[0]
    return first is _STAR or not first[1]


def _fast_expanded(pattern: str) -> str | None:
    """Like :func:`_translate_expanded`, rewritten so ``re`` cannot backtrack more than linearly; None when the
    rewriting would change the glob's meaning (see the module docstring)."""
    segments: list[str] = []
    for seg in _split_top(pattern, "/"):
        if seg == "**" and segments and segments[-1] == "**":
            continue
        segments.append(seg)
    if segments == ["**"]:
        return f"{_SEGMENT}(?:/{_SEGMENT})*/?"
    tokens: list[list[tuple[str, bool] | None] | None] = [
        None if seg == "**" else _segment_tokens(seg) for seg in segments
    ]
    stars = [i for i, seg in enumerate(segments) if seg == "**"]
    for i, seg in enumerate(segments):
        if seg != "**" and tokens[i] is None:
            return None
    # the segments between two globstars are committed: they must be what a "**" could have taken instead
    for i in range(stars[0] + 1 if stars else 0, stars[-1] if stars else 0):
        seg_tokens = tokens[i]
        if segments[i] != "**" and (seg_tokens is None or not _absorbable(seg_tokens)):
            return None
    out: list[str] = []
    last = len(segments) - 1
    open_group = False
    for idx, seg in enumerate(segments):
        if seg == "**":
            if open_group:  # the committed block ends at a segment boundary
                out.append("(?=/|\\Z))")
                open_group = False
            follows = idx != stars[-1]  # another globstar comes later: commit this one's block
            loop = "(?:" + _SEGMENT + "/)*" + ("?" if follows else "")
            if idx == 0:
                out.append(f"(?>{loop}" if follows else loop)
            elif idx == last:
                out.append(f"(?:/{_SEGMENT})*")
            else:
                out.append(f"/(?>{loop}" if follows else "/" + loop)
            open_group = follows
            continue
        if idx > 0 and segments[idx - 1] != "**":
            out.append("/")
        seg_tokens = tokens[idx]
        assert seg_tokens is not None
        out.append(_fast_segment(seg_tokens))
    if open_group:  # pragma: no cover - the last globstar never opens a group
        out.append(")")
    return "".join(out) + "/?"


def _negation(pattern: str) -> tuple[int, str]:
    """The number of leading ``!`` (negations) and the rest of the glob."""
    bang = 0
    while bang < len(pattern) and pattern[bang] == "!" and pattern[bang + 1 : bang + 2] != "(":
        bang += 1
    return bang, pattern[bang:]


def _check_nesting(pattern: str) -> None:
    depth = 0
    for ch in pattern:
        if ch in "({[":
            depth += 1
            if depth > _MAX_GLOB_NESTING:
                raise PatternError(f"glob nests braces and groups more than {_MAX_GLOB_NESTING} deep")
        elif ch in ")}]":
            depth = max(0, depth - 1)


@functools.lru_cache(maxsize=8192)
def _fast_source(pattern: str) -> str | None:
    """Like :func:`glob_to_regex_source`, in the backtracking-free form; None when the glob needs the automaton."""
    bang, body = _negation(pattern)
    alts: list[str] = []
    for p in _expand_braces(body):
        fast = _fast_expanded(p)
        if fast is None:
            return None
        alts.append(fast)
    inner = "|".join(f"(?:{a})" for a in alts) if alts else "(?!)"
    if bang % 2 == 1:
        return f"(?!(?:{inner})\\Z)(?s:.*)"
    return f"{re.escape(pattern)}|{inner}"


@functools.lru_cache(maxsize=8192)
def glob_to_regex_source(pattern: str) -> str:
    """Regex source equivalent to the glob ``pattern`` (for use with ``fullmatch``, DOTALL).

    Includes the negation (leading ``!``) and the equality shortcut of picomatch.

    Raises:
        PatternError: the glob cannot be translated (bad range, too many brace alternatives).
    """
    _check_nesting(pattern)
    bang, body = _negation(pattern)
    alts = [_translate_expanded(p) for p in _expand_braces(body)]
    inner = "|".join(f"(?:{a})" for a in alts) if alts else "(?!)"
    if bang % 2 == 1:
        return f"(?!(?:{inner})\\Z)(?s:.*)"
    return f"{re.escape(pattern)}|{inner}"


def _compile(source: str, what: str, fast: bool) -> FullMatcher:
    """``re`` for a backtracking-free source, else the linear automaton."""
    try:
        if fast:
            return re.compile(source, re.DOTALL)
        return automaton.compile_fullmatch(source)
    except (re.error, RecursionError, OverflowError) as exc:  # pragma: no cover - translator bug guard
        raise PatternError(f"cannot compile {what}: {exc}") from exc


def _sources(patterns: tuple[str, ...]) -> tuple[list[str], bool]:
    """The regex sources of ``patterns``: all backtracking-free (and True), or all plain (and False)."""
    fast = [_fast_source(p) for p in patterns]
    if all(f is not None for f in fast):
        return [f for f in fast if f is not None], True
    return [glob_to_regex_source(p) for p in patterns], False


@functools.lru_cache(maxsize=8192)
def compile_glob(pattern: str) -> FullMatcher:
    """Compile one glob; use ``.fullmatch(candidate)`` (truthy on a match, else None).

    Raises:
        PatternError: the glob is invalid.
    """
    glob_to_regex_source(pattern)  # validates
    (source,), fast = _sources((pattern,))
    return _compile(f"(?:{source})", f"glob {pattern!r}", fast)


@functools.lru_cache(maxsize=4096)
def compile_glob_list(patterns: tuple[str, ...]) -> FullMatcher | None:
    """Compile an OR of globs into one alternation; ``None`` for an empty list.

    Raises:
        PatternError: one of the globs is invalid.
    """
    if not patterns:
        return None
    for p in patterns:
        compile_glob(p)  # validates each one and names the culprit
    sources, fast = _sources(patterns)
    source = "|".join(f"(?:{s})" for s in sources)
    return _compile(source, f"globs {list(patterns)!r}", fast)


@functools.lru_cache(maxsize=4096)
def compile_path_filter(include: tuple[str, ...], exclude: tuple[str, ...]) -> FullMatcher:
    """One matcher that fully matches a path iff it matches no ``exclude`` glob and (when
    ``include`` is non-empty) some ``include`` glob: one call per changed file.

    Raises:
        PatternError: one of the globs is invalid.
    """
    for p in include + exclude:
        compile_glob(p)
    sources, fast = _sources(include + exclude)
    inc = "|".join(f"(?:{s})" for s in sources[: len(include)])
    exc = "|".join(f"(?:{s})" for s in sources[len(include) :])
    if not exc:
        source = f"(?:{inc})" if inc else "(?s:.*)"
    elif not inc:
        source = f"(?!(?:{exc})\\Z)(?s:.*)"
    else:
        # Includes first: most paths fail on their first characters, before any exclusion runs.
        source = f"(?=(?:{inc})\\Z)(?!(?:{exc})\\Z)(?s:.*)"
    return _compile(source, f"path filter {list(include)!r} / {list(exclude)!r}", fast)


def glob_match(pattern: str, candidate: str) -> bool:
    """True when ``candidate`` matches the picomatch glob ``pattern``."""
    return compile_glob(pattern).fullmatch(candidate) is not None
