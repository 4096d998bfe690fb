"""Arbitrary webhook requests against ``kici-standalone`` in independent mode (a subprocess with the real
PostgreSQL stores, over loopback HTTP): the server never answers 5xx and never records a delivery whose signature
does not verify.

The server runs out of process on purpose: hypothesis requires that nothing advances the global ``random`` state
while it draws an example, and a server's threads in this process (connection pools add jitter with ``random``)
would do exactly that at moments no test controls.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import (
    APP_ID,
    BOUND,
    GENERIC_NAME,
    GENERIC_SECRET,
    ORG,
    WEBHOOK_SECRET,
    Independent,
)
from tests.support.props import examples

SANITY = "fuzz-sanity-delivery"


@dataclass
class Client:
    """Blocking HTTP and SQL access to the running orchestrator (no background threads in this process)."""

    http: httpx.Client
    db: psycopg.Connection[Any]

    def post(self, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        return self.http.post(path, content=body, headers=headers)

    def recorded(self, *, delivery: str | None = None) -> int:
        """Event-log rows other than the sanity delivery (or only ``delivery``'s)."""
        sql = "SELECT count(*) FROM event_log WHERE " + ("delivery_id = %s" if delivery else "delivery_id <> %s")
        row = self.db.execute(sql, (delivery or SANITY,)).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="module")
def app(independent: Independent) -> Iterator[Client]:
    with (
        httpx.Client(base_url=independent.url, timeout=BOUND) as http,
        psycopg.connect(independent.db_url, autocommit=True) as db,
    ):
        yield Client(http=http, db=db)


TOKEN = string.ascii_letters + string.digits + "-_"
# Printable ASCII without surrounding whitespace: HTTP trims it around a field value, and h11 refuses to send it.
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.strip)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {
            "ref": st.just("refs/heads/main"),
            "after": st.just("a" * 40),
            "repository": st.fixed_dictionaries({"full_name": st.just("acme/app")}),
        },
        optional={"action": st.text(max_size=10)},
    ).map(lambda v: json.dumps(v).encode()),
)
paths = st.one_of(
    st.sampled_from(
        [
            f"/webhook/{ORG}/github",
            f"/webhook/{ORG}/generic/{GENERIC_NAME}",
            "/webhook/nobody/github",
            f"/webhook/{ORG}/generic/ghost",
            f"/webhook/nobody/generic/{GENERIC_NAME}",
        ]
    ),
    st.builds(
        lambda org, rest: f"/webhook/{org}/{rest}",
        st.text(TOKEN + ".%~", min_size=1, max_size=20),
        st.text(TOKEN + "/", max_size=30),
    ),
)
HEADER_NAMES = [
    "content-type",
    "x-github-event",
    "x-github-delivery",
    "x-hub-signature-256",
    "x-github-hook-installation-target-type",
    "x-github-hook-installation-target-id",
    "x-signature-256",
    "x-event-type",
    "x-delivery-id",
    "x-idempotency-key",
    "x-forwarded-for",
    "content-encoding",
]
random_headers = st.dictionaries(
    st.sampled_from(HEADER_NAMES) | st.text(TOKEN, min_size=1, max_size=20), header_text, max_size=8
)
github_like = st.fixed_dictionaries(
    {
        "x-github-hook-installation-target-type": st.sampled_from(["integration", "repository", ""]),
        "x-github-hook-installation-target-id": st.sampled_from([APP_ID, "1", "", "-1"]) | header_text,
        "x-github-event": st.sampled_from(["push", "ping", "pull_request", ""]) | header_text,
        "x-github-delivery": header_text,
        "content-type": st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain"]),
    }
)


@st.composite
def requests(draw: Any) -> tuple[str, dict[str, str], bytes]:
    path = draw(paths)
    body = draw(bodies)
    headers = {**draw(random_headers), **draw(st.one_of(st.just({}), github_like))}
    # Signatures are never valid: absent, garbage, the wrong secret, or the right secret over other bytes.
    wrong = draw(st.sampled_from(["absent", "garbage", "wrong-secret", "other-bytes"]))
    for name, secret in (("x-hub-signature-256", WEBHOOK_SECRET), ("x-signature-256", GENERIC_SECRET)):
        if wrong == "absent":
            headers.pop(name, None)
        elif wrong == "garbage":
            headers[name] = draw(header_text)
        elif wrong == "wrong-secret":
            headers[name] = "sha256=" + hmac.new(b"not-" + secret.encode(), body, hashlib.sha256).hexdigest()
        else:
            headers[name] = "sha256=" + hmac.new(secret.encode(), body + b"\n", hashlib.sha256).hexdigest()
    return path, headers, body


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_arbitrary_requests_never_5xx_and_never_record_unsigned(
    app: Client, request: tuple[str, dict[str, str], bytes]
) -> None:
    path, headers, body = request
    resp = app.post(path, headers, body)
    assert resp.status_code < 500, (resp.status_code, resp.text)
    assert resp.status_code not in (200, 202), (resp.status_code, resp.text)
    assert app.recorded() == 0


def test_fixture_sanity_a_signed_push_is_recorded(app: Client) -> None:
    """The fuzzed server does accept a correctly signed delivery (so the property above is not vacuous)."""
    body = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}}).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = app.post(
        f"/webhook/{ORG}/github",
        {
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": SANITY,
            "x-github-hook-installation-target-type": "integration",
            "x-github-hook-installation-target-id": APP_ID,
            "x-hub-signature-256": sig,
        },
        body,
    )
    assert resp.status_code == 202, resp.text
    assert app.recorded(delivery=SANITY) == 1
