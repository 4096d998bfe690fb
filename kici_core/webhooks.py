"""Pure rules of direct webhook ingestion: signature schemes, body decoding, event-type extraction.

Everything here works on bytes, header mappings (lower-cased keys) and plain values; the HTTP routes in the
runtime call these and map the results to status codes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl

from kici_core import jsontypes
from kici_core.jsontypes import JSONValue

GENERIC_METHODS = ("hmac_sha256", "bearer_token", "api_key", "ip_allowlist", "none")
"""Verification methods of generic sources; the secret-bearing ones keep the secret in the SecretStore."""

SECRET_METHODS = {"hmac_sha256": "secret", "bearer_token": "token", "api_key": "key"}
"""Method -> the SecretStore key of the source's secret (scope ``__webhook__/<source id>``)."""


def lower_headers(headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    """Header names lower-cased; for repeated headers the first value wins."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for k, v in items:
        out.setdefault(k.lower(), v)
    return out


def hmac_sha256_hex(secret: str | bytes, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_github_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """``X-Hub-Signature-256`` check: ``sha256=<hex>`` over the raw body, constant time."""
    if not header or not header.startswith("sha256="):
        return False
    given = header[len("sha256=") :]
    expected = hmac_sha256_hex(secret, body)
    if len(given) != len(expected):
        return False
    try:
        given_bytes = bytes.fromhex(given)
    except ValueError:
        return False
    return hmac.compare_digest(given_bytes, bytes.fromhex(expected))


def verify_any_github_signature(secrets: Sequence[str], body: bytes, header: str | None) -> bool:
    """True when the header verifies against any stored secret (rotation keeps several)."""
    ok = False
    for secret in secrets:
        # no early exit: the time taken does not reveal which secret matched
        ok = verify_github_signature(secret, body, header) or ok
    return ok


def _consteq_text(a: str, b: str) -> bool:
    ab, bb = a.encode(), b.encode()
    if len(ab) != len(bb):
        return False
    return hmac.compare_digest(ab, bb)


def verify_generic(
    method: str,
    config: Mapping[str, JSONValue],
    secret: str | None,
    headers: Mapping[str, str],
    body: bytes,
    client_ip: str | None,
) -> bool:
    """Verify a generic delivery by the source's method (webhooks spec §2.3).

    ``headers`` must have lower-cased names; a configured ``headerName`` is lower-cased before lookup.
    ``secret`` is the source's secret from the SecretStore (None when none is stored: fails closed).
    """
    if method == "none":
        return True
    if method == "ip_allowlist":
        allow = config.get("allowlist")
        if not client_ip or not isinstance(allow, list):
            return False
        return any(isinstance(ip, str) and ip == client_ip for ip in allow)
    if secret is None:
        return False
    if method == "hmac_sha256":
        name = config.get("headerName")
        value = headers.get(name.lower() if isinstance(name, str) and name else "x-signature-256")
        if not value:
            return False
        hexpart = value[len("sha256=") :] if value.startswith("sha256=") else value
        try:
            given = bytes.fromhex(hexpart)
        except ValueError:
            return False
        if len(given) != 32:
            return False
        return hmac.compare_digest(given, hmac.new(secret.encode(), body, hashlib.sha256).digest())
    if method in ("bearer_token", "api_key"):
        cfg_name = config.get("headerName") if method == "bearer_token" else config.get("header")
        value = headers.get(cfg_name.lower() if isinstance(cfg_name, str) and cfg_name else "authorization")
        if value is None:
            return False
        if value.startswith("Bearer "):
            value = value[len("Bearer ") :]
        return _consteq_text(value, secret)
    return False


def github_body_json(body: bytes, content_type: str | None) -> JSONValue:
    """GitHub payload bytes as JSON: ``application/json`` directly, form bodies through their ``payload`` field.

    Raises ``ValueError`` when the body is neither (``JSONTooDeep`` when it nests deeper than
    :data:`~kici_core.jsontypes.MAX_DEPTH`).
    """
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        if "payload" not in fields:
            raise ValueError("form body without a payload field")
        return jsontypes.loads(fields["payload"])
    if ctype != "application/json":
        raise ValueError(f"unsupported content type {ctype}")
    return jsontypes.loads(body)
