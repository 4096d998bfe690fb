"""GitHub webhook signatures: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``.

The check itself is a pure rule of the core (:func:`kici_core.webhooks.verify_github_signature`); this module
re-exports it next to :func:`github_signature`, which produces the header (test servers, the dev relay).
"""

from __future__ import annotations

from kici_core.webhooks import hmac_sha256_hex, verify_github_signature

__all__ = ["SIGNATURE_HEADER", "github_signature", "verify_github_signature"]

SIGNATURE_HEADER = "x-hub-signature-256"


def github_signature(secret: bytes | str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    return "sha256=" + hmac_sha256_hex(secret, body)
