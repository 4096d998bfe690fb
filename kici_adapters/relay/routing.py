"""Routing keys and the API-key routing patterns that restrict them.

A routing key names one webhook source: ``github:<appId>`` or ``generic:<orgId>:<sourceId>``. A pattern is
``provider:id`` (exact) or ``provider:*`` (every key of that provider, including three-part generic keys).
A key with no patterns may receive every source of its organisation.
"""

from __future__ import annotations

from collections.abc import Sequence

from kici_core.errors import InvalidInput


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` unchanged if it has the ``provider:id`` shape.

    Raises:
        InvalidInput: the provider or the id part is empty, or the pattern contains whitespace.
    """
    provider, sep, rest = pattern.partition(":")
    if not sep or not provider or not rest or any(ch.isspace() for ch in pattern):
        raise InvalidInput(f"routing pattern {pattern!r} must look like provider:id or provider:*")
    return pattern


def pattern_matches(pattern: str, routing_key: str) -> bool:
    """True when ``pattern`` covers ``routing_key``: equal, or a ``provider:*`` prefix match."""
    if pattern == routing_key:
        return True
    if pattern.endswith(":*"):
        return routing_key.startswith(pattern[:-1]) and len(routing_key) > len(pattern) - 1
    return False


def key_allowed(patterns: Sequence[str], routing_key: str) -> bool:
    """True when an API key with these patterns may receive ``routing_key`` (no patterns: all keys)."""
    return not patterns or any(pattern_matches(p, routing_key) for p in patterns)


def routing_key_problem(routing_key: str, org: str) -> str | None:
    """Why a connection of ``org`` may not register ``routing_key``, or None when it may.

    Only the shape is checked here (and, for generic keys, that the embedded org is the caller's own);
    pattern checks are :func:`key_allowed`'s job.
    """
    provider, sep, rest = routing_key.partition(":")
    if not sep or not provider or not rest:
        return "malformed routing key"
    if provider == "generic":
        key_org, sep2, source_id = rest.partition(":")
        if not sep2 or not key_org or not source_id:
            return "generic routing keys look like generic:<orgId>:<sourceId>"
        if key_org != org:
            return "routing key belongs to another organization"
    return None


def github_key(app_id: str) -> str:
    """The routing key of a GitHub App."""
    return f"github:{app_id}"


def generic_key(org: str, source_id: str) -> str:
    """The routing key of a generic webhook source."""
    return f"generic:{org}:{source_id}"
