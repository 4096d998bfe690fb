"""Signature checks the relay makes before relaying (the orchestrator checks again after reassembly)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from kici_runtime.relay.store import Source


def github_signature_ok(body: bytes, header: str | None, webhook_secrets: Iterable[str]) -> bool:
    """True when ``header`` is ``sha256=<hex HMAC-SHA256 of body>`` under one of the secrets."""
    if not header or not header.startswith("sha256="):
        return False
    return any(_hex_hmac_matches(body, header[len("sha256=") :], s) for s in webhook_secrets)


def _hex_hmac_matches(body: bytes, claimed_hex: str, secret: str) -> bool:
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    if len(claimed_hex) != len(expected):
        return False
    try:
        claimed = bytes.fromhex(claimed_hex)
    except ValueError:
        return False
    return hmac.compare_digest(claimed, bytes.fromhex(expected))


def generic_signature_ok(source: Source, headers: Mapping[str, str], body: bytes) -> bool:
    """Check a generic delivery by the source's method (``headers`` keys are lower-case).

    ``hmac_sha256``: the header holds ``sha256=<hex>`` or bare hex of HMAC-SHA256(secret, body).
    ``bearer_token``: the header holds the token, optionally after one ``Bearer ``. ``none``: always true.
    """
    if source.method == "none":
        return True
    value = headers.get(source.header or "")
    if not value:
        return False
    if source.method == "hmac_sha256":
        claimed = value[len("sha256=") :] if value.startswith("sha256=") else value
        return _hex_hmac_matches(body, claimed, source.secret)
    if source.method == "bearer_token":
        token = value[len("Bearer ") :] if value.startswith("Bearer ") else value
        given, wanted = token.encode("utf-8"), source.secret.encode("utf-8")
        return len(given) == len(wanted) and hmac.compare_digest(given, wanted)
    return False
