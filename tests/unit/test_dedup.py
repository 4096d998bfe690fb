"""Dedup key derivation for GitHub, relayed and generic deliveries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core import dedup, errors
from tests.support.props import examples

GUID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


class TestGitHub:
    def test_header_name_is_case_insensitive(self):
        k1 = dedup.github_dedup_key("org1", {"X-GitHub-Delivery": GUID})
        k2 = dedup.github_dedup_key("org1", {"x-github-delivery": GUID})
        assert k1 == k2 == dedup.DedupKey(org_id="org1", delivery_id=GUID)

    def test_direct_and_relayed_copies_share_a_key(self):
        assert dedup.github_dedup_key("org1", {"X-GitHub-Delivery": GUID}) == dedup.relay_dedup_key("org1", GUID)

    def test_orgs_are_separate(self):
        assert dedup.relay_dedup_key("a", GUID) != dedup.relay_dedup_key("b", GUID)

    @pytest.mark.parametrize("headers", [{}, {"X-GitHub-Delivery": ""}, {"X-GitHub-Delivery": "  "}])
    def test_missing_header(self, headers):
        with pytest.raises(errors.InvalidInput, match="X-GitHub-Delivery"):
            dedup.github_dedup_key("org1", headers)


class TestValidation:
    @pytest.mark.parametrize(
        ("org", "delivery"),
        [
            ("", "d"),
            ("x" * 17, "d"),
            ("a/b", "d"),
            ("o", ""),
            ("o", "x" * 513),
            ("o", " padded"),
            ("o", "line\nbreak"),
        ],
    )
    def test_rejects(self, org, delivery):
        with pytest.raises(errors.InvalidInput):
            dedup.DedupKey(org_id=org, delivery_id=delivery)

    def test_limits_are_inclusive(self):
        key = dedup.DedupKey(org_id="x" * 16, delivery_id="y" * 512)
        assert len(key.org_id) == dedup.ORG_ID_MAX_LEN
        assert dedup.DedupKey(org_id="__default__", delivery_id="g:1").org_id == "__default__"


class TestGeneric:
    rk = "generic:org1:5f0c"

    def key(self, headers, **kw):
        kw.setdefault("fallback_id", "fresh-uuid")
        return dedup.generic_dedup_key(org_id="org1", routing_key=self.rk, headers=headers, **kw).delivery_id

    def test_configured_header_wins(self):
        headers = {"X-My-Key": "k1", "x-idempotency-key": "k2", "x-delivery-id": "d"}
        assert self.key(headers, idempotency_key_header="X-MY-KEY") == f"{self.rk}:k1"

    def test_body_path_then_idempotency_header(self):
        body = {"event": {"id": "b1", "n": 3}}
        assert self.key({"x-idempotency-key": "k2"}, body=body, idempotency_key_path="$.event.id") == f"{self.rk}:b1"
        # non-string values do not count
        assert self.key({"x-idempotency-key": "k2"}, body=body, idempotency_key_path="event.n") == f"{self.rk}:k2"
        assert self.key({}, body=body, idempotency_key_path="$event.missing") == f"{self.rk}:fresh-uuid"

    def test_delivery_header_order(self):
        assert self.key({"x-request-id": "r", "x-delivery-id": "d"}) == f"{self.rk}:d"
        assert self.key({"x-request-id": "r"}) == f"{self.rk}:r"
        assert self.key({}) == f"{self.rk}:fresh-uuid"

    def test_local_sources_ignore_idempotency_keys(self):
        headers = {"x-idempotency-key": "k", "x-request-id": "r"}
        assert self.key(headers, local=True) == f"{self.rk}:r"

    def test_universal_git_reads_provider_headers(self):
        k = dedup.universal_git_dedup_key(
            org_id="org1",
            routing_key="git:1",
            headers={"X-GitHub-Delivery": GUID, "X-Request-Id": "r"},
            fallback_id="u",
        )
        assert k.delivery_id == f"git:1:{GUID}"
        k2 = dedup.universal_git_dedup_key(
            org_id="org1",
            routing_key="git:1",
            headers={"X-Gitea-Delivery": "g", "X-GitHub-Delivery": GUID},
            fallback_id="u",
        )
        assert k2.delivery_id == "git:1:g"

    def test_fanout_slot(self):
        inbound = dedup.relay_dedup_key("org1", "d1")
        assert dedup.fanout_delivery_id(inbound, "reg9") == dedup.DedupKey(org_id="org1", delivery_id="d1:reg9")
        with pytest.raises(errors.InvalidInput):
            dedup.fanout_delivery_id(inbound, "")

    def test_empty_routing_key(self):
        with pytest.raises(errors.InvalidInput):
            dedup.generic_dedup_key(org_id="o", routing_key="", headers={}, fallback_id="f")

    @settings(max_examples=examples(60), deadline=None)
    @given(
        value=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60),
        upper=st.booleans(),
    )
    def test_derivation_is_deterministic_and_case_insensitive(self, value, upper):
        name = "X-DELIVERY-ID" if upper else "x-delivery-id"
        a = dedup.generic_dedup_key(org_id="o", routing_key="rk", headers={name: value}, fallback_id="f1")
        b = dedup.generic_dedup_key(org_id="o", routing_key="rk", headers={"x-delivery-id": value}, fallback_id="f2")
        assert a == b
        assert a.delivery_id == f"rk:{value}"
