"""GitHub webhook signatures: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``."""

from __future__ import annotations

import hashlib
import hmac
import string

__all__ = ["SIGNATURE_HEADER", "github_signature", "verify_github_signature"]

SIGNATURE_HEADER = "x-hub-signature-256"
_PREFIX = "sha256="
_HEX = frozenset(string.hexdigits)


def github_signature(secret: bytes | str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body`` signed with ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return _PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_github_signature(secret: bytes | str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is a valid GitHub signature of ``body`` under ``secret``.

    The header must carry the ``sha256=`` prefix followed by 64 hex digits (either case). The digests are
    compared in constant time. A missing, unprefixed or malformed header is ``False``, never an error, so
    callers can simply try every stored secret of a source in turn.
    """
    if header is None or not header.startswith(_PREFIX):
        return False
    digits = header[len(_PREFIX) :]
    if len(digits) != 64 or not all(c in _HEX for c in digits):
        return False
    given = bytes.fromhex(digits)
    key = secret.encode() if isinstance(secret, str) else secret
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if len(given) != len(expected):
        return False
    return hmac.compare_digest(given, expected)
