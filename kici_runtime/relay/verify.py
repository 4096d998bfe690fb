"""Signature checks the relay makes before relaying (the orchestrator checks again after reassembly).

The schemes are the core's (:mod:`kici_core.webhooks`); this module maps the relay's source rows onto them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kici_adapters.relay.store import Source
from kici_core import webhooks


def github_signature_ok(body: bytes, header: str | None, webhook_secrets: Iterable[str]) -> bool:
    """True when ``header`` is ``sha256=<hex HMAC-SHA256 of body>`` under one of the secrets."""
    return webhooks.verify_any_github_signature(list(webhook_secrets), body, header)


def generic_signature_ok(source: Source, headers: Mapping[str, str], body: bytes) -> bool:
    """Check a generic delivery by the source's method (``headers`` keys are lower-case).

    ``hmac_sha256``: the header holds ``sha256=<hex>`` or bare hex of HMAC-SHA256(secret, body).
    ``bearer_token``: the header holds the token, optionally after one ``Bearer ``. ``none``: always true.
    """
    if source.method not in ("none", "hmac_sha256", "bearer_token"):
        return False
    config = {"headerName": source.header} if source.header else {}
    return webhooks.verify_generic(source.method, config, source.secret, headers, body, None)
