"""Parsed lock files shared across deliveries, and the conversion of lock-file values to plain JSON.

:class:`ParsedLockfiles` keeps the parse of a lock file (by the hash of its bytes) with what is derived from it
once: its trigger index, the registrations it makes, its jobs as plain JSON.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping

from kici_core import lockfile, matching, registrations
from kici_core.jsontypes import JSONValue


def to_plain(value: object) -> JSONValue:
    """A JSON-serialisable copy of a (possibly read-only) lock-file value."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class ParsedLockfiles:
    """A small LRU of parsed lock files keyed by the SHA-256 of their bytes, with their trigger indexes.

    A :class:`~kici_core.lockfile.Lockfile` is immutable, so every delivery that reads the same file shares one
    parse and one :class:`~kici_core.matching.TriggerIndex` (compiled triggers, evaluation plans, rendered
    traces). Only valid files are kept: a corrupt one raises ``LockfileError`` every time.
    """

    def __init__(self, *, max_entries: int = 64) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, lockfile.Lockfile] = OrderedDict()
        self._indexes: dict[int, tuple[lockfile.Lockfile, matching.TriggerIndex]] = {}
        self._registrations: dict[int, tuple[lockfile.Lockfile, registrations.LockRegistrations]] = {}
        self._plain: dict[int, tuple[lockfile.Lockfile, dict[int, tuple[object, JSONValue]]]] = {}
        self.parses = 0
        """Parses run so far (cache misses)."""

    def parse(self, content: bytes) -> lockfile.Lockfile:
        """The parsed lock file for ``content``. Raises ``LockfileError`` like :func:`lockfile.parse_lockfile`."""
        key = hashlib.sha256(content).digest()
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        self.parses += 1
        parsed = lockfile.parse_lockfile(content)
        if self._max > 0:
            self._entries[key] = parsed
            while len(self._entries) > self._max:
                _, evicted = self._entries.popitem(last=False)
                self._indexes.pop(id(evicted), None)
                self._registrations.pop(id(evicted), None)
                self._plain.pop(id(evicted), None)
        return parsed

    def cached(self, content: bytes) -> lockfile.Lockfile | None:
        """The parsed lock file for ``content`` when it is cached (no parse: cheap enough for any event loop)."""
        key = hashlib.sha256(content).digest()
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def index(self, lock: lockfile.Lockfile) -> matching.TriggerIndex:
        """The trigger index of ``lock`` (built once while ``lock`` is cached)."""
        found = self._indexes.get(id(lock))
        if found is not None and found[0] is lock:
            return found[1]
        built = matching.TriggerIndex(
            [matching.WorkflowTriggers(name=w.name, triggers=w.triggers) for w in lock.workflows]
        )
        if any(cached is lock for cached in self._entries.values()):
            self._indexes[id(lock)] = (lock, built)
        return built

    def plain(self, lock: lockfile.Lockfile) -> Callable[[object], JSONValue]:
        """:func:`to_plain` for values of ``lock`` (its jobs), converting each value once while ``lock`` is cached:
        every run of a cached lock file's job starts from the same plain job object (callers copy before they
        change it). The conversions are dropped with the lock file."""
        found = self._plain.get(id(lock))
        if found is not None and found[0] is lock:
            memo = found[1]
        elif any(cached is lock for cached in self._entries.values()):
            memo = {}
            self._plain[id(lock)] = (lock, memo)
        else:
            return to_plain

        def convert(value: object) -> JSONValue:
            hit = memo.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
            converted = to_plain(value)
            memo[id(value)] = (value, converted)  # holding the value keeps its id from being reused
            return converted

        return convert

    def registered(self, lock: lockfile.Lockfile) -> registrations.LockRegistrations:
        """What the registrations from ``lock`` share (built once while ``lock`` is cached): every default-branch
        push of an unchanged lock file registers the very same workflow objects."""
        found = self._registrations.get(id(lock))
        if found is not None and found[0] is lock:
            return found[1]
        built = registrations.lock_registrations(lock)
        if any(cached is lock for cached in self._entries.values()):
            self._registrations[id(lock)] = (lock, built)
        return built
