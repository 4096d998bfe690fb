"""Secrets at rest: AES-256-GCM with the master key ``KICI_SECRET_KEY`` (the PostgreSQL secret store that keeps
them is ``kici_adapters.postgres.secrets``).

Stored format (identical to upstream, so either can read the other's database)::

    base64( nonce[12] || tag[16] || ciphertext )      standard alphabet, padded

The plaintext is UTF-8 text. The additional authenticated data binds a value to where it lives; for a
``scoped_secrets`` row it is ``"<org_id>:<scope>:<key>"``, so a value copied to another row fails to
decrypt. The master key is used directly (no KDF): 64 hex characters, or base64 of exactly 32 bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kici_core.errors import ConfigError, SecretDecryptError

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
EMPTY_SCOPE_SENTINEL = "__empty__"
"""Key of the placeholder row upstream writes for an empty scope; never returned as a secret."""

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_KEY_HINT = "Provide a 64-character hex string or a base64-encoded 32-byte value."
_log = logging.getLogger("kici.secrets")


# ------------------------------------------------------------------------------------------- master key
def decode_master_key(text: str) -> bytes:
    """Decode a master key: 64 hex characters, else base64; the result must be 32 bytes.

    Raises:
        ValueError: a message meant to follow the variable's name; it never contains the key.
    """
    text = text.strip()
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"is neither 64 hex characters nor valid base64. {_KEY_HINT}") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"Encryption key must be exactly {KEY_BYTES} bytes, got {len(raw)} bytes. {_KEY_HINT}")
    return raw


def parse_master_key(value: str, *, name: str = "KICI_SECRET_KEY") -> bytes:
    """Decode a master key (see :func:`decode_master_key`), naming the variable on failure.

    Raises:
        ConfigError: ``"<name> is malformed: ..."``, never echoing the value.
    """
    try:
        return decode_master_key(value)
    except ValueError as exc:
        raise ConfigError(f"{name} is malformed: {exc}") from None


# ------------------------------------------------------------------------------------------- cipher
def scoped_secret_aad(org_id: str, scope: str, key: str) -> str:
    """AAD of a ``scoped_secrets`` row."""
    return f"{org_id}:{scope}:{key}"


def seal(key: bytes, plaintext: str, aad: str) -> str:
    """Encrypt ``plaintext`` under ``key`` bound to ``aad``; returns the stored text."""
    nonce = os.urandom(NONCE_BYTES)
    ct_and_tag = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
    ciphertext, tag = ct_and_tag[:-TAG_BYTES], ct_and_tag[-TAG_BYTES:]
    return base64.b64encode(nonce + tag + ciphertext).decode("ascii")


def unseal(key: bytes, stored: str, aad: str) -> str:
    """Decrypt stored text. Raises ``SecretDecryptError`` for a wrong key, wrong AAD or damaged value."""
    try:
        blob = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        raise SecretDecryptError() from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise SecretDecryptError()
    nonce, tag, ciphertext = (
        blob[:NONCE_BYTES],
        blob[NONCE_BYTES : NONCE_BYTES + TAG_BYTES],
        blob[NONCE_BYTES + TAG_BYTES :],
    )
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext + tag, aad.encode("utf-8"))
        return plain.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise SecretDecryptError() from None


class SecretCipher:
    """Seals with the current key; opens with the current key, then the previous one during rotation."""

    def __init__(self, key: bytes, *, old_key: bytes | None = None) -> None:
        for k in (key, old_key):
            if k is not None and len(k) != KEY_BYTES:
                raise ConfigError("KICI_SECRET_KEY must decode to exactly 32 bytes")
        self._key = key
        self._old = old_key

    def seal(self, plaintext: str, aad: str) -> str:
        """Encrypt with the current key."""
        return seal(self._key, plaintext, aad)

    def open(self, stored: str, aad: str) -> str:
        """Decrypt with the current key, falling back to the old one. Raises ``SecretDecryptError``."""
        try:
            return unseal(self._key, stored, aad)
        except SecretDecryptError:
            if self._old is None:
                _log.error("Failed to decrypt secret with current key (AAD: %s)", aad)
                raise
        try:
            return unseal(self._old, stored, aad)
        except SecretDecryptError:
            _log.error("Failed to decrypt secret with both current and old key (AAD: %s)", aad)
            raise
