"""The form of a GitHub App private key, checked on its text alone (no cryptography import).

``kici-admin`` runs these checks before it sends a key; the orchestrator parses the key itself
(:func:`kici_adapters.github.app.load_private_key`, which starts with the same checks).
"""

from __future__ import annotations

from kici_core.errors import InvalidInput

__all__ = ["check_pem_form"]


def check_pem_form(pem: str | bytes) -> bytes:
    """``pem`` as bytes, when it looks like a PEM private key.

    Raises:
        InvalidInput: not PEM, or a public key; the message never quotes the key material.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN" not in data:
        raise InvalidInput(
            "private key is not PEM: expected the contents of the .pem file GitHub generated "
            "(use @path to read it from a file)"
        )
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise InvalidInput("private key is a public key: use the App's private key (.pem) instead")
    return data
