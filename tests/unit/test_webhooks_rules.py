from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import webhooks
from tests.support.props import examples


def sig(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_github_signature_valid_wrong_and_malformed() -> None:
    body = b'{"zen":"x"}'
    assert webhooks.verify_github_signature("s3cret", body, sig("s3cret", body))
    assert not webhooks.verify_github_signature("other", body, sig("s3cret", body))
    assert not webhooks.verify_github_signature("s3cret", body, None)
    assert not webhooks.verify_github_signature("s3cret", body, sig("s3cret", body)[7:])  # no prefix
    assert not webhooks.verify_github_signature("s3cret", body, "sha256=zz" + "0" * 62)
    assert not webhooks.verify_github_signature("s3cret", body, "sha256=abc")


def test_any_secret_of_a_rotation_verifies() -> None:
    body = b"{}"
    assert webhooks.verify_any_github_signature(["old", "new"], body, sig("new", body))
    assert not webhooks.verify_any_github_signature([], body, sig("new", body))


@settings(max_examples=examples(50), deadline=None)
@given(st.binary(max_size=200), st.text(min_size=1, max_size=20))
def test_signature_roundtrip(body: bytes, secret: str) -> None:
    assert webhooks.verify_github_signature(secret, body, sig(secret, body))
    assert not webhooks.verify_github_signature(secret + "x", body, sig(secret, body))


def test_generic_hmac_prefixed_raw_and_custom_header() -> None:
    body = b'{"a":1}'
    raw = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert webhooks.verify_generic("hmac_sha256", {}, "k", {"x-signature-256": "sha256=" + raw}, body, None)
    assert webhooks.verify_generic("hmac_sha256", {}, "k", {"x-signature-256": raw}, body, None)
    assert webhooks.verify_generic("hmac_sha256", {"headerName": "X-My-Sig"}, "k", {"x-my-sig": raw}, body, None)
    assert not webhooks.verify_generic("hmac_sha256", {}, "k", {}, body, None)
    assert not webhooks.verify_generic("hmac_sha256", {}, "k", {"x-signature-256": raw[:-2]}, body, None)
    assert not webhooks.verify_generic("hmac_sha256", {}, None, {"x-signature-256": raw}, body, None)


def test_generic_bearer_api_key_allowlist_none() -> None:
    assert webhooks.verify_generic("bearer_token", {}, "tok", {"authorization": "Bearer tok"}, b"", None)
    assert webhooks.verify_generic("bearer_token", {}, "tok", {"authorization": "tok"}, b"", None)
    assert not webhooks.verify_generic("bearer_token", {}, "tok", {"authorization": "bearer tok"}, b"", None)
    assert webhooks.verify_generic("api_key", {"header": "X-Key"}, "k1", {"x-key": "k1"}, b"", None)
    assert webhooks.verify_generic("ip_allowlist", {"allowlist": ["10.0.0.1"]}, None, {}, b"", "10.0.0.1")
    assert not webhooks.verify_generic("ip_allowlist", {"allowlist": ["10.0.0.1"]}, None, {}, b"", None)
    assert webhooks.verify_generic("none", {}, None, {}, b"", None)
    assert not webhooks.verify_generic("unknown", {}, "x", {}, b"", None)


def test_github_form_and_json_bodies() -> None:
    assert webhooks.github_body_json(b'{"a":1}', "application/json") == {"a": 1}
    assert webhooks.github_body_json(b"payload=%7B%22a%22%3A2%7D", "application/x-www-form-urlencoded") == {"a": 2}
    for body, ctype in (
        (b"nope", "application/json"),
        (b"x=1", "application/x-www-form-urlencoded"),
        (b"{}", "text/plain"),
    ):
        try:
            webhooks.github_body_json(body, ctype)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{body!r} {ctype} should be rejected")
