"""AES-256-GCM sealing in upstream's stored format, and master-key parsing."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_adapters import secrets
from kici_core.errors import ConfigError, SecretDecryptError
from tests.support.props import examples

KEY_HEX = "00112233445566778899aabbccddeeff" * 2
KEY = bytes.fromhex(KEY_HEX)
OTHER_KEY = bytes(range(32))


def _upstream_seal(key: bytes, nonce: bytes, plaintext: str, aad: str) -> str:
    """The documented format, built by hand: base64(nonce || tag || ciphertext)."""
    ct_tag = AESGCM(key).encrypt(nonce, plaintext.encode(), aad.encode())
    return base64.b64encode(nonce + ct_tag[-16:] + ct_tag[:-16]).decode()


def test_reads_a_value_sealed_in_the_documented_format() -> None:
    aad = "__system__:__source__/3f2a:webhookSecret"
    stored = _upstream_seal(KEY, b"\x07" * 12, "hunter2-é", aad)
    assert secrets.unseal(KEY, stored, aad) == "hunter2-é"


def test_fixed_vector_layout() -> None:
    # Tag sits before the ciphertext: the 4-byte plaintext gives 12 + 16 + 4 bytes.
    stored = _upstream_seal(KEY, bytes(12), "abcd", "o:s:k")
    blob = base64.b64decode(stored)
    assert len(blob) == 32
    assert blob[:12] == bytes(12)
    assert secrets.unseal(KEY, stored, "o:s:k") == "abcd"


def test_our_output_is_in_the_documented_format() -> None:
    stored = secrets.seal(KEY, "value", "o:s:k")
    blob = base64.b64decode(stored, validate=True)
    nonce, tag, ct = blob[:12], blob[12:28], blob[28:]
    assert AESGCM(KEY).decrypt(nonce, ct + tag, b"o:s:k") == b"value"


def test_nonces_are_fresh() -> None:
    assert secrets.seal(KEY, "same", "a") != secrets.seal(KEY, "same", "a")


@settings(max_examples=examples(40), deadline=None)
@given(plaintext=st.text(), aad=st.text())
def test_round_trip(plaintext: str, aad: str) -> None:
    assert secrets.unseal(KEY, secrets.seal(KEY, plaintext, aad), aad) == plaintext


def test_wrong_key_raises_the_documented_error() -> None:
    stored = secrets.seal(KEY, "v", "o:s:k")
    with pytest.raises(SecretDecryptError) as info:
        secrets.unseal(OTHER_KEY, stored, "o:s:k")
    assert str(info.value) == ("cannot decrypt: KICI_SECRET_KEY does not match the key these secrets were written with")


def test_aad_binds_the_value_to_its_row() -> None:
    stored = secrets.seal(KEY, "v", secrets.scoped_secret_aad("o", "s", "k1"))
    with pytest.raises(SecretDecryptError):
        secrets.unseal(KEY, stored, secrets.scoped_secret_aad("o", "s", "k2"))


@pytest.mark.parametrize("damaged", ["", "not base64!!", base64.b64encode(b"short").decode()])
def test_damaged_values_raise_not_crash(damaged: str) -> None:
    with pytest.raises(SecretDecryptError):
        secrets.unseal(KEY, damaged, "a")


def test_cipher_falls_back_to_the_old_key() -> None:
    stored = secrets.seal(OTHER_KEY, "v", "a")
    assert secrets.SecretCipher(KEY, old_key=OTHER_KEY).open(stored, "a") == "v"
    with pytest.raises(SecretDecryptError):
        secrets.SecretCipher(KEY).open(stored, "a")


def test_parse_hex_and_base64_keys() -> None:
    assert secrets.parse_master_key(f"  {KEY_HEX.upper()}\n") == KEY
    assert secrets.parse_master_key(base64.b64encode(KEY).decode()) == KEY


@pytest.mark.parametrize(
    "bad", ["abc", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode(), "zz" * 32]
)
def test_bad_keys_are_refused_without_echo(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        secrets.parse_master_key(bad, name="KICI_SECRET_KEY_OLD")
    assert "KICI_SECRET_KEY_OLD" in str(info.value)
    assert bad not in str(info.value)


def test_wrong_length_message_names_the_byte_count() -> None:
    with pytest.raises(ConfigError, match="got 31 bytes"):
        secrets.parse_master_key(base64.b64encode(b"x" * 31).decode())
