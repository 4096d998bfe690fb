"""The error shared by the lock file's pattern dialects (globs, JavaScript regexes, JSONPath)."""

from __future__ import annotations

from kici_core.errors import InvalidInput

__all__ = ["PatternError"]


class PatternError(InvalidInput):
    """A glob, regex or JSONPath pattern is invalid or unsupported."""
