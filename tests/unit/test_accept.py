"""The accept use case (kici_core.accept) over fakes: direct and relayed deliveries through one flow.

Dedup across both ways, bad signatures, unknown sources, misconfigured sources, and the per-way payload rules.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from kici_core import accept
from kici_core.delivery_records import Delivery
from kici_core.source_records import GenericSource, GitHubSource
from kici_core.testing import fakes

pytestmark = pytest.mark.anyio

SECRET = "It's a Secret to Everybody"
GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
GEN_ID = "0f0e0d0c-0000-4000-8000-000000000001"
GEN_KEY = f"generic:acme:{GEN_ID}"
PUSH = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "acme/app"}}).encode()


class Seen:
    """An IntakeObserver that records what it was told."""

    def __init__(self) -> None:
        self.verified: list[tuple[str, str]] = []
        self.duplicates: list[str] = []
        self.refused: list[str] = []

    def received(self, path: str, event: str) -> None:
        self.verified.append((path, event))

    def duplicate(self, delivery: Delivery) -> None:
        self.duplicates.append(delivery.delivery_id)

    def local_refused(self, routing_key: str) -> None:
        self.refused.append(routing_key)


class World:
    def __init__(self) -> None:
        self.clock = fakes.FakeClock()
        self.inbox = fakes.FakeDeliveryInbox(fakes.FakeBlobStore(), self.clock)
        self.sources = fakes.FakeSourceStore(self.clock)
        self.secrets = fakes.FakeSecretStore()
        self.seen = Seen()
        counter = iter(range(1, 1000))
        self.intake = accept.Intake(
            sources=self.sources,
            secrets=self.secrets,
            inbox=self.inbox,
            clock=self.clock,
            ids=lambda: f"gen-{next(counter)}",
            observer=self.seen,
        )

    async def github(self, customer_id: str = "acme") -> GitHubSource:
        src = await self.sources.add_github(
            GitHubSource(id="src-1", routing_key="github:42", name="app", app_id="42", customer_id=customer_id)
        )
        await self.secrets.put("__system__", "__source__/src-1", "webhookSecret", SECRET)
        return src

    async def generic(self, **kw: object) -> GenericSource:
        fields: dict[str, object] = {"id": GEN_ID, "org_id": "acme", "name": "ci", "routing_key": GEN_KEY}
        fields.update(kw)
        src = await self.sources.add_generic(GenericSource(**fields))  # type: ignore[arg-type]
        await self.secrets.put("__system__", f"__webhook__/{src.id}", "secret", SECRET)
        return src

    async def run(self, request: accept.Incoming) -> accept.Outcome:
        return await accept.accept_delivery(request, self.intake)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def direct_github(
    body: bytes = PUSH,
    *,
    org: str = "acme",
    signature: str | None = None,
    content_type: str = "application/json",
) -> accept.Incoming:
    return accept.Incoming(
        via="direct",
        headers={"content-type": content_type},
        body=body,
        routing_key="github:42",
        org_id=org,
        event="push",
        delivery_id=GUID,
        signature=sign(body) if signature is None else signature,
    )


def relayed(
    body: bytes = PUSH,
    *,
    routing_key: str = "github:42",
    delivery_id: str = GUID,
    signature: str | None = None,
    headers: dict[str, str] | None = None,
    platform_org: str | None = None,
) -> accept.Incoming:
    return accept.Incoming(
        via="relay",
        headers={"content-type": "application/json"} if headers is None else headers,
        body=body,
        routing_key=routing_key,
        platform_org=platform_org,
        event="push",
        delivery_id=delivery_id,
        action=None,
        signature=sign(body) if signature is None else signature or None,
    )


async def test_direct_then_relayed_copy_is_one_delivery() -> None:
    w = World()
    await w.github()
    first = await w.run(direct_github())
    assert first == accept.Accepted(delivery_id=GUID, event="push", routing_key="github:42")
    second = await w.run(relayed())
    assert second == accept.Accepted(delivery_id=GUID, event="push", routing_key="github:42", duplicate=True)
    entry = await w.inbox.get("acme", GUID)
    assert entry is not None and entry.source == "direct" and entry.status == "received"
    assert await w.inbox.depth() == 1
    assert w.seen.duplicates == [GUID]
    assert w.seen.verified == [("direct", "push"), ("relay", "push")]


async def test_relayed_then_direct_copy_is_one_delivery_under_the_platform_org() -> None:
    """A source left at ``__default__`` records relayed deliveries under the link's Platform org, which is the
    org the direct route names in its URL: the two copies meet."""
    w = World()
    await w.github(customer_id="__default__")
    assert await w.run(relayed(platform_org="acme")) == accept.Accepted(
        delivery_id=GUID, event="push", routing_key="github:42"
    )
    assert (await w.run(direct_github())) == accept.Accepted(
        delivery_id=GUID, event="push", routing_key="github:42", duplicate=True
    )
    entry = await w.inbox.get("acme", GUID)
    assert entry is not None and entry.source == "relay"
    item = (await w.inbox.claim(worker_id="w", limit=5, lease_seconds=5))[0]
    assert await w.inbox.payload(item) == PUSH


async def test_generic_keys_meet_across_both_ways() -> None:
    w = World()
    await w.generic()
    body = b'{"kind":"deploy"}'
    headers = {
        "content-type": "application/json",
        "x-event-type": "deploy",
        "x-delivery-id": "abc",
        "x-signature-256": sign(body),
    }
    direct = accept.Incoming(via="direct", headers=headers, body=body, org_id="acme", source_name="ci")
    assert await w.run(direct) == accept.Accepted(delivery_id=f"{GEN_KEY}:abc", event="deploy", routing_key=GEN_KEY)
    again = accept.Incoming(
        via="relay", headers=headers, body=body, routing_key=GEN_KEY, event="deploy", delivery_id="abc"
    )
    assert await w.run(again) == accept.Accepted(
        delivery_id=f"{GEN_KEY}:abc", event="deploy", routing_key=GEN_KEY, duplicate=True
    )
    assert await w.inbox.depth() == 1


@pytest.mark.parametrize("via", ["direct", "relay"])
async def test_bad_signature_is_rejected_and_stores_nothing(via: str) -> None:
    w = World()
    await w.github()
    wrong = sign(PUSH, "another secret")
    request = direct_github(signature=wrong) if via == "direct" else relayed(signature=wrong)
    outcome = await w.run(request)
    assert isinstance(outcome, accept.Rejected) and outcome.code == "bad_signature"
    assert outcome.reason == "Invalid signature" and outcome.detail == "no rotation secret matched x-hub-signature-256"
    assert SECRET not in outcome.detail and wrong not in outcome.detail
    assert await w.inbox.depth() == 0
    assert w.seen.verified == [("direct" if via == "direct" else "relay", "unknown")]


async def test_missing_signature_and_rotated_secret() -> None:
    w = World()
    await w.github()
    missing = await w.run(relayed(signature=""))
    assert isinstance(missing, accept.Rejected) and missing.code == "bad_signature"
    assert missing.detail == "missing signature header x-hub-signature-256"
    # the previous secret still verifies while it is being rotated out
    await w.secrets.put("__system__", "__source__/src-1", "webhookSecret", "new secret")
    await w.secrets.put("__system__", "__source__/src-1", "webhookSecretPrevious", SECRET)
    assert isinstance(await w.run(direct_github()), accept.Accepted)


@pytest.mark.parametrize(
    ("request_", "detail"),
    [
        (direct_github(org="other"), "no source row for routing key"),
        (relayed(routing_key="github:7"), "no source row for routing key"),
        (relayed(routing_key="gitlab:1"), "provider not implemented for routing key prefix"),
        (relayed(routing_key="generic:acme:nope"), "no enabled generic source for routing key"),
        (
            accept.Incoming(via="direct", headers={}, body=b"{}", org_id="acme", source_name="nope"),
            "no enabled generic source for routing key",
        ),
    ],
)
async def test_unknown_sources(request_: accept.Incoming, detail: str) -> None:
    w = World()
    await w.github()
    outcome = await w.run(request_)
    assert isinstance(outcome, accept.Rejected) and outcome.code == "unknown_source" and outcome.detail == detail
    assert await w.inbox.depth() == 0


async def test_source_without_secret_is_misconfigured_on_both_ways() -> None:
    w = World()
    await w.sources.add_github(
        GitHubSource(id="src-1", routing_key="github:42", name="app", app_id="42", customer_id="acme")
    )
    for request in (direct_github(), relayed()):
        outcome = await w.run(request)
        assert isinstance(outcome, accept.Rejected) and outcome.code == "misconfigured"
        assert outcome.reason == "Source verification misconfigured"
        assert outcome.detail == "no webhook secret stored for source"


async def test_payload_rules_per_way() -> None:
    """A relayed non-JSON body is stored wrapped; a direct one is refused (webhooks spec §2.5, platform §2.5)."""
    w = World()
    await w.generic()
    text = b"plain text body"
    relayed_text = accept.Incoming(
        via="relay",
        headers={"content-type": "text/plain", "x-signature-256": sign(text)},
        body=text,
        routing_key=GEN_KEY,
        event="note",
        delivery_id="n-1",
    )
    outcome = await w.run(relayed_text)
    assert isinstance(outcome, accept.Accepted)
    item = (await w.inbox.claim(worker_id="w", limit=5, lease_seconds=5))[0]
    assert json.loads(await w.inbox.payload(item)) == {
        "rawBody": "plain text body",
        "contentType": "text/plain",
    }
    await w.github()
    bad = b"not json"
    direct = await w.run(direct_github(bad))
    assert isinstance(direct, accept.Rejected) and (direct.code, direct.reason) == (
        "bad_request",
        "Invalid payload",
    )
    relay = await w.run(relayed(bad, delivery_id="other"))
    assert isinstance(relay, accept.Rejected) and relay.detail == "webhook body is not valid JSON"


async def test_direct_generic_size_filter_and_rate_limit() -> None:
    w = World()
    await w.generic(max_payload_bytes=16, allowed_events=("deploy",), rate_limit_rpm=2)

    def req(body: bytes, event: str) -> accept.Incoming:
        return accept.Incoming(
            via="direct",
            body=body,
            org_id="acme",
            source_name="ci",
            headers={
                "content-type": "application/json",
                "x-event-type": event,
                "x-signature-256": sign(body),
            },
        )

    big = await w.run(req(b'{"x":"' + b"y" * 32 + b'"}', "deploy"))
    assert isinstance(big, accept.Rejected) and big.code == "too_large" and big.max_bytes == 16
    filtered = await w.run(req(b"{}", "build"))
    assert filtered == accept.Filtered(reason="Event 'build' not in allowed list")
    assert isinstance(await w.run(req(b'{"n":1}', "deploy")), accept.Accepted)
    limited = await w.run(req(b'{"n":2}', "deploy"))
    assert isinstance(limited, accept.Rejected) and limited.code == "rate_limited" and limited.retry_after
    assert await w.inbox.depth() == 1


async def test_local_sources_refused_unless_enabled() -> None:
    w = World()
    await w.generic(provider_type="local", verification_method="none")
    body = b'{"ref":"main"}'
    request = accept.Incoming(
        via="relay",
        headers={"content-type": "application/json"},
        body=body,
        routing_key=GEN_KEY,
        event="push",
        delivery_id="l-1",
    )
    outcome = await w.run(request)
    assert isinstance(outcome, accept.Rejected) and outcome.code == "unknown_source"
    assert w.seen.refused == [GEN_KEY]
    w.intake.local_sources_enabled = True
    assert await w.run(request) == accept.Accepted(delivery_id=f"{GEN_KEY}:l-1", event="push", routing_key=GEN_KEY)


async def test_storage_outage_raises_and_acknowledges_nothing() -> None:
    from kici_core import errors

    w = World()
    await w.github()
    w.inbox.fail_accepts = True
    with pytest.raises(errors.Unavailable):
        await w.run(relayed())
    w.inbox.fail_accepts = False
    assert isinstance(await w.run(relayed()), accept.Accepted)
