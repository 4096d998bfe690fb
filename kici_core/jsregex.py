"""JavaScript ``RegExp`` sources (with flags) translated to Python ``re``.

Lock files carry regexes as JavaScript source and flags; KiCI evaluates them the way
``RegExp.prototype.test`` does: an unanchored search, stateless even with ``g``/``y``.
The translation keeps the JavaScript meaning where the two dialects differ:

* ``$`` without ``m`` is the very end of the input (Python's ``$`` also matches before a final
  newline); ``.`` without ``s`` excludes ``\\r``, U+2028 and U+2029 as well as ``\\n``;
* ``\\d``, ``\\w``, ``\\b`` and their negations are ASCII; ``\\s`` is JavaScript's whitespace set;
  the negated forms work inside classes too (``[\\D_]``);
* ``[]`` matches nothing and ``[^]`` any character; ``[``, ``&``, ``~``, ``|`` and ``--`` are
  literal inside a class;
* ``(?<name>...)`` and ``\\k<name>`` are named groups; ``\\u{...}`` is a code point; ``\\cX`` a
  control character; any other escaped letter without a meaning is the letter itself;
* Unicode property escapes (``\\p{...}`` with ``u``/``v``) are not supported and refused.

Compiled patterns are cached (``functools.lru_cache``).
"""

from __future__ import annotations

import functools
import re

from kici_core.patterns import PatternError

__all__ = ["MAX_REPETITIONS", "PatternError", "check_redos", "compile_js_regex", "js_regex_search"]

_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
_IGNORED_FLAGS = frozenset("gyudv")
# Letters with a meaning in a JS escape; any other escaped letter is the letter itself.
_ESCAPE_LETTERS = frozenset("dDwWsSbBnrtvfcxuk0")
_DOT = "[^\\n\\r\\u2028\\u2029]"

# Class bodies (for use inside "[...]") of JavaScript's shorthand classes.
_DIGIT = "0-9"
_WORD = "A-Za-z0-9_"
_SPACE = "\\t\\n\\x0b\\x0c\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
_SHORTHANDS = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_NEGATED_SHORTHANDS = {"D": _DIGIT, "W": _WORD, "S": _SPACE}
_WORD_BOUNDARY = f"(?:(?<=[{_WORD}])(?![{_WORD}])|(?<![{_WORD}])(?=[{_WORD}]))"
_NOT_WORD_BOUNDARY = f"(?:(?<=[{_WORD}])(?=[{_WORD}])|(?<![{_WORD}])(?![{_WORD}]))"


MAX_REPETITIONS = 25
"""Quantifiers one lock-file regex may have (the ReDoS guard, as upstream's ``safe-regex`` heuristic)."""
_BRACE_QUANTIFIER = re.compile(r"\{\d+(?:,\d*)?\}")


def check_redos(source: str, flags: str = "") -> None:
    """The ReDoS guard lock-file regexes pass at parse time (upstream's ``safe-regex`` star-height heuristic).

    A regex is refused when a quantified part contains another quantifier (star height above 1: ``(a+)+``,
    ``(a|b*)*``, ``(x?)+``) or when it has more than :data:`MAX_REPETITIONS` quantifiers (``*``, ``+``, ``?``,
    ``{n}``, ``{n,}``, ``{n,m}``; a lazy ``?`` does not count again).

    Raises:
        PatternError: naming the regex and the rule it breaks.
    """
    where = f"regex /{source}/{flags}"
    heights: list[int] = [0]  # per open group: the highest star height inside it so far
    reps = 0
    last = -1  # star height of the atom just read (-1: nothing quantifiable)
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        quant = 0
        if ch in "*+?":
            quant = 1
        elif ch == "{" and (m := _BRACE_QUANTIFIER.match(source, i)) is not None:
            quant = m.end() - i
        if quant:
            if last >= 0:
                reps += 1
                height = last + 1
                if height > 1:
                    raise PatternError(
                        f"{where} is prone to catastrophic backtracking: a quantified part "
                        "contains another quantifier (star height above 1)"
                    )
                heights[-1] = max(heights[-1], height)
                last = -1
            i += quant
            if i < n and source[i] == "?":  # lazy
                i += 1
            continue
        if ch == "\\":
            i += 2
            last = 0
        elif ch == "[":
            j = i + 1
            if j < n and source[j] == "^":
                j += 1
            if j < n and source[j] == "]":
                j += 1
            while j < n and source[j] != "]":
                j += 2 if source[j] == "\\" else 1
            i = j + 1
            last = 0
        elif ch == "(":
            heights.append(0)
            i += 1
            if source.startswith("?", i):  # (?:  (?=  (?!  (?<=  (?<!  (?<name>
                i += 1
                if source.startswith("<", i) and not source.startswith(("<=", "<!"), i):
                    i = source.find(">", i) + 1 or n
                elif i < n:
                    i += 2 if source.startswith(("<=", "<!"), i) else 1
            last = -1
            continue
        elif ch == ")":
            inner = heights.pop() if len(heights) > 1 else 0
            i += 1
            last = inner
        elif ch in "|^$":
            i += 1
            last = -1
        else:
            i += 1
            last = 0
        heights[-1] = max(heights[-1], max(last, 0))
    if reps > MAX_REPETITIONS:
        raise PatternError(
            f"{where} has {reps} quantifiers, more than the {MAX_REPETITIONS} allowed "
            "(prone to catastrophic backtracking)"
        )


def _code_point(src: str, i: int) -> tuple[str, int]:
    """Translate ``\\u{hex}`` starting at ``src[i] == '\\\\'``; returns (python, next index)."""
    close = src.find("}", i + 3)
    if close == -1:
        raise PatternError("bad \\u{...} escape")
    try:
        value = int(src[i + 3 : close], 16)
    except ValueError:
        raise PatternError("bad \\u{...} escape") from None
    if value > 0x10FFFF:
        raise PatternError("\\u{...} escape beyond U+10FFFF")
    return f"\\U{value:08x}", close + 1


def _escape(src: str, i: int, unicode: bool) -> tuple[str, int]:
    """Translate the escapes that mean the same in and out of a class, at ``src[i] == '\\\\'``
    (a character follows); returns (python, next index)."""
    nxt = src[i + 1]
    if nxt in "pP" and unicode:
        raise PatternError("Unicode property escapes are not supported")
    if nxt == "u" and src[i + 2 : i + 3] == "{":
        return _code_point(src, i)
    letter = src[i + 2 : i + 3]
    if nxt == "c" and letter.isascii() and letter.isalpha():
        return f"\\x{ord(letter) % 32:02x}", i + 3
    if nxt.isalpha() and nxt not in _ESCAPE_LETTERS:
        return re.escape(nxt), i + 2
    return src[i : i + 2], i + 2


def _translate_class(src: str, i: int, unicode: bool) -> tuple[str, int]:
    """Translate a JS class starting at ``src[i] == '['``; returns (python, next index)."""
    j = i + 1
    negate = j < len(src) and src[j] == "^"
    if negate:
        j += 1
    if j < len(src) and src[j] == "]":
        # "[]" matches nothing, "[^]" matches anything.
        return ("[\\s\\S]" if negate else "(?!)"), j + 1
    members: list[str] = []
    complements: list[str] = []  # bodies of the sets whose complement is a member (\D, \W, \S)
    while j < len(src) and src[j] != "]":
        ch = src[j]
        if ch == "\\" and j + 1 < len(src):
            nxt = src[j + 1]
            if nxt in _SHORTHANDS:
                members.append(_SHORTHANDS[nxt])
                j += 2
            elif nxt in _NEGATED_SHORTHANDS:
                complements.append(_NEGATED_SHORTHANDS[nxt])
                j += 2
            else:
                escaped, j = _escape(src, j, unicode)
                members.append(escaped)
            continue
        if ch in "[&~|":
            members.append("\\" + ch)
        elif ch == "-" and src[j + 1 : j + 2] == "-":
            members.append("\\-")
        else:
            members.append(ch)
        j += 1
    if j >= len(src):
        raise PatternError("unterminated character class")
    body = "".join(members)
    if not complements:
        return "[" + ("^" if negate else "") + body + "]", j + 1
    if not negate:
        # Union: a member, or outside one of the complemented sets.
        alternatives = ([f"[{body}]"] if body else []) + [f"[^{c}]" for c in complements]
        return "(?:" + "|".join(alternatives) + ")", j + 1
    # Negated: not a member, and inside every complemented set.
    out = f"(?![{body}])" if body else ""
    out += "".join(f"(?=[{c}])" for c in complements[:-1])
    return out + f"[{complements[-1]}]", j + 1


def _translate(source: str, flags: str) -> str:
    multiline = "m" in flags
    dotall = "s" in flags
    unicode = "u" in flags or "v" in flags
    out: list[str] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError("regex ends with a backslash")
            nxt = source[i + 1]
            if nxt == "k" and source[i + 2 : i + 3] == "<":
                close = source.find(">", i + 3)
                if close == -1:
                    raise PatternError("bad \\k<name> backreference")
                out.append(f"(?P={source[i + 3 : close]})")
                i = close + 1
                continue
            if nxt in _SHORTHANDS:
                out.append(f"[{_SHORTHANDS[nxt]}]")
            elif nxt in _NEGATED_SHORTHANDS:
                out.append(f"[^{_NEGATED_SHORTHANDS[nxt]}]")
            elif nxt == "b":
                out.append(_WORD_BOUNDARY)
            elif nxt == "B":
                out.append(_NOT_WORD_BOUNDARY)
            else:
                escaped, i = _escape(source, i, unicode)
                out.append(escaped)
                continue
            i += 2
            continue
        if ch == "[":
            cls, i = _translate_class(source, i, unicode)
            out.append(cls)
            continue
        if ch == "(" and source.startswith("(?<", i) and source[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        if ch == "$" and not multiline:
            out.append("\\Z")
        elif ch == "." and not dotall:
            out.append(_DOT)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def compile_js_regex(source: str, flags: str = "") -> re.Pattern[str]:
    """Compile a JavaScript ``RegExp`` (source + flags) to Python; use ``.search``.

    Flags ``i``, ``m``, ``s`` map to Python flags; ``g``, ``y``, ``u``, ``d``, ``v`` do not change
    a single test and are ignored (the result is stateless, unlike a JS ``g`` regex).

    Raises:
        PatternError: unknown flag, or the source is not a valid (or supported) regex; the
            message starts with ``invalid regex /source/flags``.
    """
    where = f"invalid regex /{source}/{flags}"
    py_flags = 0
    for flag in flags:
        if flag in _FLAGS:
            py_flags |= _FLAGS[flag]
        elif flag not in _IGNORED_FLAGS:
            raise PatternError(f"{where}: unknown flag {flag!r}")
    try:
        translated = _translate(source, flags)
    except PatternError as exc:
        raise PatternError(f"{where}: {exc.message}") from None
    try:
        return re.compile(translated, py_flags)
    except (re.error, OverflowError, RecursionError) as exc:
        raise PatternError(f"{where}: {exc}") from exc


def js_regex_search(source: str, flags: str, candidate: str) -> bool:
    """``RegExp(source, flags).test(candidate)`` without the ``g``/``y`` statefulness."""
    return compile_js_regex(source, flags).search(candidate) is not None
