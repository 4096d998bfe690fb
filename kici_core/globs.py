"""Pattern dialects used by lock files: picomatch globs, JavaScript regexes and a JSONPath subset.

Globs follow picomatch 4 with default options (see ``docs/triggers.md``): whole-string,
case-sensitive matching; ``*`` and ``?`` never cross ``/``; ``**`` as a whole segment spans
segments; wildcards never match a ``.`` at the start of a segment; ``x/**`` also matches ``x``;
braces, POSIX classes and extglobs are supported; a leading ``!`` negates.

Regexes are JavaScript ``RegExp`` sources with flags, translated to Python ``re`` and used with
``search`` (unanchored), like ``RegExp.prototype.test``.

Every pattern is compiled once (``functools.lru_cache``); lists of globs are combined into one
compiled alternation.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from kici_core.errors import InvalidInput
from kici_core.jsontypes import JSONValue

__all__ = [
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


class PatternError(InvalidInput):
    """A glob, regex or JSONPath pattern is invalid or unsupported."""


# ---------------------------------------------------------------------------------------------
# Globs
# ---------------------------------------------------------------------------------------------

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
        if (
            i + 2 < len(body)
            and body[i + 1] == "-"
            and body[i + 2] != "]"
        ):
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


@functools.lru_cache(maxsize=8192)
def glob_to_regex_source(pattern: str) -> str:
    """Regex source equivalent to the glob ``pattern`` (for use with ``fullmatch``, DOTALL).

    Includes the negation (leading ``!``) and the equality shortcut of picomatch.

    Raises:
        PatternError: the glob cannot be translated (bad range, too many brace alternatives).
    """
    bang = 0
    while bang < len(pattern) and pattern[bang] == "!" and pattern[bang + 1 : bang + 2] != "(":
        bang += 1
    body = pattern[bang:]
    alts = [_translate_expanded(p) for p in _expand_braces(body)]
    inner = "|".join(f"(?:{a})" for a in alts) if alts else "(?!)"
    if bang % 2 == 1:
        return f"(?!(?:{inner})\\Z)(?s:.*)"
    return f"{re.escape(pattern)}|{inner}"


def _compile(source: str, what: str) -> re.Pattern[str]:
    try:
        return re.compile(source, re.DOTALL)
    except (re.error, RecursionError, OverflowError) as exc:  # pragma: no cover - translator bug guard
        raise PatternError(f"cannot compile {what}: {exc}") from exc


@functools.lru_cache(maxsize=8192)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile one glob; use ``.fullmatch(candidate)``.

    Raises:
        PatternError: the glob is invalid.
    """
    return _compile(f"(?:{glob_to_regex_source(pattern)})", f"glob {pattern!r}")


@functools.lru_cache(maxsize=4096)
def compile_glob_list(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """Compile an OR of globs into one alternation; ``None`` for an empty list.

    Raises:
        PatternError: one of the globs is invalid.
    """
    if not patterns:
        return None
    for p in patterns:
        compile_glob(p)  # validates each one and names the culprit
    source = "|".join(f"(?:{glob_to_regex_source(p)})" for p in patterns)
    return _compile(source, f"globs {list(patterns)!r}")


@functools.lru_cache(maxsize=4096)
def compile_path_filter(include: tuple[str, ...], exclude: tuple[str, ...]) -> re.Pattern[str]:
    """One regex that fully matches a path iff it matches no ``exclude`` glob and (when
    ``include`` is non-empty) some ``include`` glob: one regex call per changed file.

    Raises:
        PatternError: one of the globs is invalid.
    """
    for p in include + exclude:
        compile_glob(p)
    inc = "|".join(f"(?:{glob_to_regex_source(p)})" for p in include)
    exc = "|".join(f"(?:{glob_to_regex_source(p)})" for p in exclude)
    if not exc:
        source = f"(?:{inc})" if inc else "(?s:.*)"
    elif not inc:
        source = f"(?!(?:{exc})\\Z)(?s:.*)"
    else:
        # Includes first: most paths fail on their first characters, before any exclusion runs.
        source = f"(?=(?:{inc})\\Z)(?!(?:{exc})\\Z)(?s:.*)"
    return _compile(source, f"path filter {list(include)!r} / {list(exclude)!r}")


def glob_match(pattern: str, candidate: str) -> bool:
    """True when ``candidate`` matches the picomatch glob ``pattern``."""
    return compile_glob(pattern).fullmatch(candidate) is not None


# ---------------------------------------------------------------------------------------------
# JavaScript regexes
# ---------------------------------------------------------------------------------------------

_JS_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
_JS_IGNORED_FLAGS = set("gyudv")
# Letters with a meaning in a JS escape; any other escaped letter is the letter itself.
_JS_ESCAPE_LETTERS = set("dDwWsSbBnrtvfcxuk0")
_JS_DOT = "[^\\n\\r\\u2028\\u2029]"


def _translate_js_class(src: str, i: int) -> tuple[str, int]:
    """Translate a JS class starting at ``src[i] == '['``; returns (python, next index)."""
    j = i + 1
    negate = j < len(src) and src[j] == "^"
    if negate:
        j += 1
    if j < len(src) and src[j] == "]":
        # "[]" matches nothing, "[^]" matches anything.
        return ("[\\s\\S]" if negate else "(?!)"), j + 1
    out: list[str] = []
    while j < len(src) and src[j] != "]":
        ch = src[j]
        if ch == "\\" and j + 1 < len(src):
            nxt = src[j + 1]
            if nxt == "d":
                out.append("0-9")
            elif nxt == "w":
                out.append("A-Za-z0-9_")
            elif nxt.isalpha() and nxt not in _JS_ESCAPE_LETTERS:
                out.append(re.escape(nxt))
            elif nxt == "u" and src[j + 2 : j + 3] == "{":
                close = src.find("}", j + 3)
                if close == -1:
                    raise PatternError("bad \\u{...} escape")
                out.append(f"\\U{int(src[j + 3 : close], 16):08x}")
                j = close + 1
                continue
            else:
                out.append(src[j : j + 2])
            j += 2
            continue
        if ch in "[&~|":
            out.append("\\" + ch)
        elif ch == "-" and src[j + 1 : j + 2] == "-":
            out.append("\\-")
        else:
            out.append(ch)
        j += 1
    if j >= len(src):
        raise PatternError("unterminated character class")
    return "[" + ("^" if negate else "") + "".join(out) + "]", j + 1


def _translate_js(source: str, flags: str) -> str:
    multiline = "m" in flags
    dotall = "s" in flags
    out: list[str] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError("regex ends with a backslash")
            nxt = source[i + 1]
            if nxt == "d":
                out.append("[0-9]")
            elif nxt == "D":
                out.append("[^0-9]")
            elif nxt == "w":
                out.append("[A-Za-z0-9_]")
            elif nxt == "W":
                out.append("[^A-Za-z0-9_]")
            elif nxt == "k" and source[i + 2 : i + 3] == "<":
                close = source.find(">", i + 3)
                if close == -1:
                    raise PatternError("bad \\k<name> backreference")
                out.append(f"(?P={source[i + 3 : close]})")
                i = close + 1
                continue
            elif nxt == "u" and source[i + 2 : i + 3] == "{":
                close = source.find("}", i + 3)
                if close == -1:
                    raise PatternError("bad \\u{...} escape")
                out.append(f"\\U{int(source[i + 3 : close], 16):08x}")
                i = close + 1
                continue
            elif nxt.isalpha() and nxt not in _JS_ESCAPE_LETTERS:
                out.append(re.escape(nxt))
            else:
                out.append(source[i : i + 2])
            i += 2
            continue
        if ch == "[":
            cls, i = _translate_js_class(source, i)
            out.append(cls)
            continue
        if ch == "(" and source.startswith("(?<", i) and source[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        if ch == "$" and not multiline:
            out.append("\\Z")
        elif ch == "." and not dotall:
            out.append(_JS_DOT)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def compile_js_regex(source: str, flags: str = "") -> re.Pattern[str]:
    """Compile a JavaScript ``RegExp`` (source + flags) to Python; use ``.search``.

    Flags ``i``, ``m``, ``s`` map to Python flags; ``g``, ``y``, ``u``, ``d``, ``v`` are ignored.

    Raises:
        PatternError: unknown flag, or the source is not a valid (or supported) regex.
    """
    py_flags = 0
    for f in flags:
        if f in _JS_FLAGS:
            py_flags |= _JS_FLAGS[f]
        elif f not in _JS_IGNORED_FLAGS:
            raise PatternError(f"invalid regex flag {f!r}")
    try:
        translated = _translate_js(source, flags)
    except PatternError as exc:
        raise PatternError(f"invalid regex /{source}/{flags}: {exc.message}") from None
    try:
        return re.compile(translated, py_flags)
    except (re.error, OverflowError, RecursionError) as exc:
        raise PatternError(f"invalid regex /{source}/{flags}: {exc}") from exc


def js_regex_search(source: str, flags: str, candidate: str) -> bool:
    """``RegExp(source, flags).test(candidate)`` without the ``g``/``y`` statefulness."""
    return compile_js_regex(source, flags).search(candidate) is not None


# ---------------------------------------------------------------------------------------------
# JSONPath subset
# ---------------------------------------------------------------------------------------------

_Step = tuple[str, str | int | None]  # ("key", name) | ("index", n) | ("wild", None) | ("desc", name|None)
_JP_TOKEN = re.compile(
    r"""\.\.(?P<dname>[A-Za-z_$][\w$-]*|\*)"""
    r"""|\.(?P<name>[A-Za-z_$][\w$-]*|\*)"""
    r"""|\[\s*(?:(?P<idx>-?\d+)|'(?P<sq>(?:[^'\\]|\\.)*)'|"(?P<dq>(?:[^"\\]|\\.)*)"|(?P<star>\*))\s*\]"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonPath:
    """A compiled JSONPath of the supported subset.

    Supported: ``$`` root, ``.name``, ``['name']`` / ``["name"]``, ``[n]`` (negative counts from
    the end), ``.*`` / ``[*]`` wildcards and ``..name`` / ``..*`` recursive descent. A path
    without a leading ``$`` is taken relative to the root. Filters, slices and unions are not
    supported.
    """

    source: str
    steps: tuple[_Step, ...]

    def find(self, doc: JSONValue) -> list[JSONValue]:
        """Every value the path selects in ``doc`` (in document order)."""
        current: list[JSONValue] = [doc]
        for kind, arg in self.steps:
            nxt: list[JSONValue] = []
            for node in current:
                if kind == "desc":
                    for sub in _descendants(node):
                        nxt.extend(_select(sub, "wild" if arg is None else "key", arg))
                else:
                    nxt.extend(_select(node, kind, arg))
            current = nxt
        return current


def _select(node: JSONValue, kind: str, arg: str | int | None) -> list[JSONValue]:
    if isinstance(node, dict):
        if kind == "key":
            return [node[arg]] if isinstance(arg, str) and arg in node else []
        if kind == "wild":
            return list(node.values())
        return []
    if isinstance(node, list):
        if kind == "index" and isinstance(arg, int):
            if -len(node) <= arg < len(node):
                return [node[arg]]
            return []
        if kind == "wild":
            return list(node)
    return []


def _descendants(node: JSONValue) -> list[JSONValue]:
    out: list[JSONValue] = [node]
    if isinstance(node, dict):
        for v in node.values():
            out.extend(_descendants(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(_descendants(v))
    return out


@functools.lru_cache(maxsize=1024)
def compile_jsonpath(path: str) -> JsonPath:
    """Parse a JSONPath of the supported subset (see :class:`JsonPath`).

    Raises:
        PatternError: the path uses unsupported or invalid syntax.
    """
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    elif text and not text.startswith((".", "[")):
        text = "." + text
    steps: list[_Step] = []
    pos = 0
    while pos < len(text):
        m = _JP_TOKEN.match(text, pos)
        if m is None:
            raise PatternError(f"unsupported JSONPath {path!r} at {text[pos:]!r}")
        if m.group("dname") is not None:
            d = m.group("dname")
            steps.append(("desc", None if d == "*" else d))
        elif m.group("name") is not None:
            nm = m.group("name")
            steps.append(("wild", None) if nm == "*" else ("key", nm))
        elif m.group("idx") is not None:
            steps.append(("index", int(m.group("idx"))))
        elif m.group("star") is not None:
            steps.append(("wild", None))
        else:
            quoted = m.group("sq") if m.group("sq") is not None else m.group("dq")
            steps.append(("key", re.sub(r"\\(.)", r"\1", quoted)))
        pos = m.end()
    return JsonPath(source=path, steps=tuple(steps))
