"""Linear-time full matching of the regexes the glob translator emits.

Python's ``re`` backtracks: a glob like ``*-*-*-*-*-z`` takes time growing with the fifth power of the
candidate's length. :mod:`kici_core.globs` therefore hands ``re`` only globs whose regex it has made
backtracking-free, and compiles every other glob with :func:`compile_fullmatch` here: the regex becomes a
Thompson NFA, simulated one character at a time over sets of states (a lazily built DFA, its states cached per
automaton), so matching takes time linear in the candidate's length whatever the pattern.

The accepted syntax is the subset the translator emits: literals and escapes, classes, ``.``, groups
``(?:…)`` and ``(?s:…)``, alternation, ``* + ?`` (greedy, lazy, or possessive on one character), ``\\Z`` and
lookaheads. A lookahead of one character (``(?!\\.)``) is a test of the next character; any other lookahead
(``!(…)`` extglobs) is decided for every position of the candidate by one backward pass of its own automaton
before the forward pass, which keeps the whole match linear.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kici_core.patterns import PatternError

__all__ = ["Automaton", "compile_fullmatch"]

_MAX_NESTING = 200
_MAX_CACHED_STATES = 4096
_END = ""  # the "next character" at the end of the candidate

Pred = Callable[[str], bool]

# --- syntax tree ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Char:
    pred: Pred


@dataclass(frozen=True, slots=True)
class _Seq:
    items: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    options: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Repeat:
    node: object
    least: int  # 0 or 1
    most_one: bool  # "?"


@dataclass(frozen=True, slots=True)
class _End:
    pass


@dataclass(frozen=True, slots=True)
class _NotNext:
    pred: Pred


@dataclass(frozen=True, slots=True)
class _Look:
    negate: bool
    node: object


def _any(ch: str) -> bool:
    return True


def _class_pred(source: str) -> Pred:
    try:
        rx = re.compile(source, re.DOTALL)
    except re.error as exc:
        raise PatternError(f"cannot compile class {source}: {exc}") from exc
    full = rx.fullmatch
    return lambda ch: full(ch) is not None


_GROUPS = (("(?:", "group"), ("(?s:", "group"), ("(?=", "ahead"), ("(?!", "not"))


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.i = 0
        self.depth = 0

    def fail(self, what: str) -> PatternError:
        return PatternError(f"unsupported regex at {self.i}: {what}")

    def parse(self) -> object:
        node = self.alt()
        if self.i != len(self.src):
            raise self.fail("unbalanced ')'")
        return node

    def alt(self) -> object:
        options = [self.seq()]
        while self.i < len(self.src) and self.src[self.i] == "|":
            self.i += 1
            options.append(self.seq())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def seq(self) -> object:
        items: list[object] = []
        src = self.src
        while self.i < len(src) and src[self.i] not in "|)":
            atom = self.atom()
            if self.i < len(src) and src[self.i] in "*+?":
                q = src[self.i]
                self.i += 1
                mode = ""
                if self.i < len(src) and src[self.i] in "?+":
                    mode = src[self.i]
                    self.i += 1
                rep = _Repeat(atom, 1 if q == "+" else 0, q == "?")
                if mode == "+":  # possessive: only on one character, where it means "and no more of it"
                    if not isinstance(atom, _Char):
                        raise self.fail("possessive quantifier on a group")
                    items.append(rep)
                    items.append(_NotNext(atom.pred))
                    continue
                atom = rep
            items.append(atom)
        return items[0] if len(items) == 1 else _Seq(tuple(items))

    def atom(self) -> object:
        src = self.src
        ch = src[self.i]
        if ch == "(":
            self.depth += 1
            if self.depth > _MAX_NESTING:
                raise PatternError("pattern nested too deeply")
            found = next((p for p in _GROUPS if src.startswith(p[0], self.i)), None)
            if found is None:
                raise self.fail("group kind")
            self.i += len(found[0])
            kind = found[1]
            inner = self.alt()
            if self.i >= len(src) or src[self.i] != ")":
                raise self.fail("missing ')'")
            self.i += 1
            self.depth -= 1
            if kind == "group":
                return inner
            if kind == "not" and isinstance(inner, _Char):
                return _NotNext(inner.pred)
            return _Look(kind == "not", inner)
        if ch == "[":
            j = self.i + 1
            if j < len(src) and src[j] == "^":
                j += 1
            while j < len(src) and src[j] != "]":
                j += 2 if src[j] == "\\" else 1
            if j >= len(src):
                raise self.fail("unterminated class")
            pred = _class_pred(src[self.i : j + 1])
            self.i = j + 1
            return _Char(pred)
        if ch == "\\":
            if self.i + 1 >= len(src):
                raise self.fail("trailing backslash")
            nxt = src[self.i + 1]
            self.i += 2
            if nxt == "Z":
                return _End()
            if nxt.isalnum():
                raise self.fail(f"escape \\{nxt}")
            return _Char(nxt.__eq__)
        if ch in "*+?{})^$":
            raise self.fail(repr(ch))
        self.i += 1
        if ch == ".":
            return _Char(_any)
        return _Char(ch.__eq__)


# --- NFA --------------------------------------------------------------------------------------------------------

_CHAR, _EPS, _ASSERT_END, _NOT_NEXT, _LOOK, _MATCH = range(6)


@dataclass(slots=True)
class _Nfa:
    kind: list[int] = field(default_factory=list)
    pred: list[Pred | None] = field(default_factory=list)
    outs: list[list[int]] = field(default_factory=list)
    look: list[int] = field(default_factory=list)
    looks: list[tuple[bool, int, int, list[int]]] = field(default_factory=list)
    """Per lookahead: (negate, start node, match node, its CHAR nodes)."""

    def node(self, kind: int, outs: list[int], pred: Pred | None = None, look: int = -1) -> int:
        self.kind.append(kind)
        self.pred.append(pred)
        self.outs.append(outs)
        self.look.append(look)
        return len(self.kind) - 1

    def build(self, tree: object, nxt: int) -> int:
        """Entry node of ``tree``, continuing at ``nxt``."""
        if isinstance(tree, _Char):
            return self.node(_CHAR, [nxt], tree.pred)
        if isinstance(tree, _Seq):
            for item in reversed(tree.items):
                nxt = self.build(item, nxt)
            return nxt
        if isinstance(tree, _Alt):
            return self.node(_EPS, [self.build(o, nxt) for o in tree.options])
        if isinstance(tree, _Repeat):
            if tree.most_one:
                return self.node(_EPS, [self.build(tree.node, nxt), nxt])
            loop = self.node(_EPS, [])
            body = self.build(tree.node, loop)
            self.outs[loop] = [body, nxt]
            return body if tree.least else loop
        if isinstance(tree, _End):
            return self.node(_ASSERT_END, [nxt])
        if isinstance(tree, _NotNext):
            return self.node(_NOT_NEXT, [nxt], tree.pred)
        if isinstance(tree, _Look):
            first = len(self.kind)
            match = self.node(_MATCH, [])
            start = self.build(tree.node, match)
            chars = [n for n in range(first, len(self.kind)) if self.kind[n] == _CHAR]
            self.looks.append((tree.negate, start, match, chars))
            return self.node(_LOOK, [nxt], look=len(self.looks) - 1)
        raise PatternError(f"unsupported regex node {tree!r}")  # pragma: no cover - parser emits no other


class _State:
    __slots__ = ("accepts", "kernel", "next")

    def __init__(self, kernel: frozenset[int]) -> None:
        self.kernel = kernel
        self.next: dict[object, _State] = {}
        self.accepts: dict[object, bool] = {}


class Automaton:
    """A compiled regex; :meth:`fullmatch` returns ``True`` or ``None`` (like ``re``'s match or no match)."""

    def __init__(self, source: str) -> None:
        self.pattern = source
        nfa = _Nfa()
        final = nfa.node(_MATCH, [])
        tree = _Parser(source).parse()
        self._start_node = nfa.build(tree, final)
        self._final = final
        self._nfa = nfa
        self._has_looks = bool(nfa.looks)
        self._states: dict[frozenset[int], _State] = {}
        self.states_built = 0
        """DFA states made so far (at most one per character read when the cache is cold)."""
        self._start = self._state(frozenset((self._start_node,)))
        # backward edges of the epsilon nodes, for the lookahead tables
        self._rev: list[list[int]] = [[] for _ in nfa.kind]
        for n, kind in enumerate(nfa.kind):
            if kind not in (_CHAR, _MATCH):
                for t in nfa.outs[n]:
                    self._rev[t].append(n)

    def _state(self, kernel: frozenset[int]) -> _State:
        found = self._states.get(kernel)
        if found is None:
            found = _State(kernel)
            self.states_built += 1
            if len(self._states) < _MAX_CACHED_STATES:
                self._states[kernel] = found
        return found

    def _closure(self, kernel: frozenset[int], ch: str, bits: tuple[bool, ...]) -> list[int]:
        """Consuming and final nodes reachable from ``kernel`` before reading ``ch`` (``_END``: at the end)."""
        nfa = self._nfa
        kind, outs, preds, look = nfa.kind, nfa.outs, nfa.pred, nfa.look
        seen: set[int] = set()
        stack = list(kernel)
        found: list[int] = []
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            k = kind[n]
            if k == _CHAR or k == _MATCH:
                found.append(n)
                continue
            if k == _ASSERT_END:
                if ch != _END:
                    continue
            elif k == _NOT_NEXT:
                pred = preds[n]
                if ch != _END and pred is not None and pred(ch):
                    continue
            elif k == _LOOK:
                negate = nfa.looks[look[n]][0]
                if bits[look[n]] == negate:
                    continue
            stack.extend(outs[n])
        return found

    def _step(self, state: _State, ch: str, bits: tuple[bool, ...]) -> _State:
        nfa = self._nfa
        kernel = frozenset(
            nfa.outs[n][0]
            for n in self._closure(state.kernel, ch, bits)
            if nfa.kind[n] == _CHAR and nfa.pred[n](ch)  # type: ignore[misc]
        )
        return self._state(kernel)

    def _accepts(self, state: _State, bits: tuple[bool, ...]) -> bool:
        return self._final in self._closure(state.kernel, _END, bits)

    def _look_tables(self, text: str) -> list[list[bool]]:
        """For every lookahead and every position ``p`` of ``text``: does its body match at ``p``?

        One backward pass per lookahead: ``live`` holds the nodes from which the body's match node is reachable
        reading ``text[p:]``. Lookaheads nested in a body come first (they are numbered first), so their tables
        are ready when the outer one needs them.
        """
        nfa = self._nfa
        n = len(text)
        tables: list[list[bool]] = []
        for _negate, start, match, chars in nfa.looks:
            table = [False] * (n + 1)
            live: set[int] = set()
            for p in range(n, -1, -1):
                ch = text[p] if p < n else _END
                seeds = [match]
                if p < n:
                    seeds += [c for c in chars if nfa.outs[c][0] in live and nfa.pred[c](ch)]  # type: ignore[misc]
                live = set(seeds)
                stack = list(seeds)
                while stack:
                    t = stack.pop()
                    for e in self._rev[t]:
                        if e in live or not self._holds(e, ch, tables, p):
                            continue
                        live.add(e)
                        stack.append(e)
                table[p] = start in live
            tables.append(table)
        return tables

    def _holds(self, e: int, ch: str, tables: list[list[bool]], p: int) -> bool:
        nfa = self._nfa
        k = nfa.kind[e]
        if k == _ASSERT_END:
            return ch == _END
        if k == _NOT_NEXT:
            pred = nfa.pred[e]
            return ch == _END or pred is None or not pred(ch)
        if k == _LOOK:
            negate = nfa.looks[nfa.look[e]][0]
            return tables[nfa.look[e]][p] != negate
        return True

    def fullmatch(self, text: str) -> bool | None:
        """``True`` when the whole of ``text`` matches, else ``None``."""
        if self._has_looks:
            return self._fullmatch_looks(text)
        state = self._start
        for ch in text:
            nxt = state.next.get(ch)
            if nxt is None:
                nxt = self._step(state, ch, ())
                state.next[ch] = nxt
            state = nxt
            if not state.kernel:
                return None
        ok = state.accepts.get(())
        if ok is None:
            ok = state.accepts[()] = self._accepts(state, ())
        return True if ok else None

    def _fullmatch_looks(self, text: str) -> bool | None:
        tables = self._look_tables(text)
        state = self._start
        for p, ch in enumerate(text):
            bits = tuple(t[p] for t in tables)
            key = (ch, bits)
            nxt = state.next.get(key)
            if nxt is None:
                nxt = self._step(state, ch, bits)
                state.next[key] = nxt
            state = nxt
            if not state.kernel:
                return None
        return True if self._accepts(state, tuple(t[len(text)] for t in tables)) else None


def compile_fullmatch(source: str) -> Automaton:
    """Compile a regex of the translator's subset for linear-time full matching.

    Raises:
        PatternError: the source uses syntax outside the subset, or nests too deeply.
    """
    return Automaton(source)
