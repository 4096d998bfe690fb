"""X-Hub-Signature-256 verification."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from kici_adapters.github.signature import github_signature, verify_github_signature
from tests.support.props import examples

BODY = b'{"action":"opened","number":1}'


def _sig(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_valid_signature_with_str_and_bytes_secret() -> None:
    header = _sig(b"s3cret", BODY)
    assert verify_github_signature("s3cret", BODY, header)
    assert verify_github_signature(b"s3cret", BODY, header)
    assert github_signature("s3cret", BODY) == header


def test_uppercase_hex_is_accepted() -> None:
    header = _sig(b"s3cret", BODY)
    assert verify_github_signature("s3cret", BODY, "sha256=" + header[7:].upper())


def test_wrong_secret_or_tampered_body_fails() -> None:
    header = _sig(b"s3cret", BODY)
    assert not verify_github_signature("other", BODY, header)
    assert not verify_github_signature("s3cret", BODY + b" ", header)


def test_missing_header_or_prefix_fails() -> None:
    digest = hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()
    assert not verify_github_signature("s3cret", BODY, None)
    assert not verify_github_signature("s3cret", BODY, "")
    assert not verify_github_signature("s3cret", BODY, digest)  # raw hex without sha256=
    assert not verify_github_signature("s3cret", BODY, "sha1=" + digest)
    assert not verify_github_signature("s3cret", BODY, "SHA256=" + digest)


def test_malformed_hex_fails() -> None:
    digest = hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()
    assert not verify_github_signature("s3cret", BODY, "sha256=" + digest[:-2])  # too short
    assert not verify_github_signature("s3cret", BODY, "sha256=" + digest + "00")  # too long
    assert not verify_github_signature("s3cret", BODY, "sha256=" + "zz" + digest[2:])  # not hex
    assert not verify_github_signature("s3cret", BODY, "sha256=" + digest[:30] + " " + digest[31:])
    assert not verify_github_signature("s3cret", BODY, "sha256=")


@settings(max_examples=examples(100), deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512), other=st.binary(max_size=512))
def test_round_trip_and_body_binding(secret: bytes, body: bytes, other: bytes) -> None:
    header = github_signature(secret, body)
    assert verify_github_signature(secret, body, header)
    assert verify_github_signature(secret, other, header) == (other == body)
