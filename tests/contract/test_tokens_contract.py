"""TokenStore contract: the fake and PgTokenStore behave the same."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from kici_adapters.postgres.tokens import PgTokenStore
from kici_core import errors
from kici_core.testing import fakes
from kici_core.token_records import AdminToken, AgentToken

pytestmark = pytest.mark.anyio

Store = fakes.FakeTokenStore | PgTokenStore
PAST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE = datetime(2999, 1, 1, tzinfo=UTC)


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def admin(label: str = "ops", **kw: object) -> AdminToken:
    return AdminToken(id=str(uuid.uuid4()), label=label, role="admin", **kw)  # type: ignore[arg-type]


async def test_admin_token_lifecycle(tokens: Store) -> None:
    assert await tokens.has_active_admin_token() is False
    tok = await tokens.create_admin_token(admin(routing_key="github:1", expires_at=FUTURE), h("t1"))
    assert tok.created_at is not None and tok.last_used_at is None and tok.revoked is False
    assert await tokens.has_active_admin_token() is True

    found = await tokens.admin_token_by_hash(h("t1"))
    assert found is not None
    assert (found.id, found.role, found.routing_key, found.label) == (tok.id, "admin", "github:1", "ops")
    assert found.last_used_at is not None
    assert await tokens.admin_token_by_hash(h("unknown")) is None

    with pytest.raises(errors.Conflict):
        await tokens.create_admin_token(admin("again"), h("t1"))
    with pytest.raises(errors.InvalidInput):
        await tokens.create_admin_token(admin("plain"), "t1")  # token text, not a hash

    expired = await tokens.create_admin_token(admin("old", expires_at=PAST), h("t2"))
    assert await tokens.admin_token_by_hash(h("t2")) is None
    assert [t.id for t in await tokens.list_admin_tokens()] == [tok.id, expired.id]

    assert await tokens.revoke_admin_token(tok.id) is True
    assert await tokens.revoke_admin_token(tok.id) is False
    assert await tokens.revoke_admin_token(str(uuid.uuid4())) is False
    assert await tokens.admin_token_by_hash(h("t1")) is None
    assert [t.revoked for t in await tokens.list_admin_tokens()] == [True, False]


async def test_bootstrap_token_is_upserted(tokens: Store) -> None:
    first_id = str(uuid.uuid4())
    await tokens.ensure_bootstrap_admin_token(h("boot-1"), first_id)
    boot = await tokens.admin_token_by_hash(h("boot-1"))
    assert boot is not None and (boot.id, boot.label, boot.role, boot.routing_key) == (
        first_id,
        "bootstrap",
        "owner",
        None,
    )

    # a new value replaces the hash on the same row: the old value stops working
    await tokens.ensure_bootstrap_admin_token(h("boot-2"), str(uuid.uuid4()))
    assert await tokens.admin_token_by_hash(h("boot-1")) is None
    again = await tokens.admin_token_by_hash(h("boot-2"))
    assert again is not None and again.id == first_id
    assert len(await tokens.list_admin_tokens()) == 1

    # revocation sticks: the next boot with the same value does not bring it back
    assert await tokens.revoke_admin_token(first_id) is True
    assert await tokens.ensure_bootstrap_admin_token(h("boot-2"), str(uuid.uuid4())) is False
    assert await tokens.admin_token_by_hash(h("boot-2")) is None
    # ... a new value rotates it: a fresh bootstrap row, the revoked one stays revoked
    rotated_id = str(uuid.uuid4())
    assert await tokens.ensure_bootstrap_admin_token(h("boot-3"), rotated_id) is True
    rotated = await tokens.admin_token_by_hash(h("boot-3"))
    assert rotated is not None and (rotated.id, rotated.label, rotated.role) == (rotated_id, "bootstrap", "owner")
    assert await tokens.ensure_bootstrap_admin_token(h("boot-2"), str(uuid.uuid4())) is False
    assert [t.revoked for t in await tokens.list_admin_tokens()] == [True, False]

    other = await tokens.create_admin_token(admin(), h("taken"))
    with pytest.raises(errors.Conflict):
        await tokens.ensure_bootstrap_admin_token(h("taken"), str(uuid.uuid4()))
    assert other.label == "ops"


async def test_agent_token_lifecycle(tokens: Store) -> None:
    text = "kat_" + "ab" * 32
    tok = AgentToken(
        id=str(uuid.uuid4()),
        token_prefix=text[:12],
        labels=("linux", "gpu"),
        mandatory_labels=("gpu",),
        agent_type="ephemeral",
        created_by="ops",
        expires_at=FUTURE,
    )
    stored = await tokens.create_agent_token(tok, h(text))
    assert stored.created_at is not None
    found = await tokens.agent_token_by_hash(h(text))
    assert found is not None and found.last_seen_at is not None
    assert (found.id, found.labels, found.mandatory_labels, found.agent_type, found.created_by) == (
        tok.id,
        ("linux", "gpu"),
        ("gpu",),
        "ephemeral",
        "ops",
    )
    with pytest.raises(errors.Conflict):
        await tokens.create_agent_token(AgentToken(id=str(uuid.uuid4()), token_prefix="kat_x"), h(text))

    plain = await tokens.create_agent_token(AgentToken(id=str(uuid.uuid4()), token_prefix="kat_y"), h("y"))
    assert plain.labels == () and plain.agent_type == "static"
    await tokens.create_agent_token(AgentToken(id=str(uuid.uuid4()), token_prefix="kat_z", expires_at=PAST), h("z"))
    assert await tokens.agent_token_by_hash(h("z")) is None
    assert [t.token_prefix for t in await tokens.list_agent_tokens()] == [text[:12], "kat_y", "kat_z"]

    assert await tokens.revoke_agent_token(tok.id) is True
    assert await tokens.revoke_agent_token(tok.id) is False
    assert await tokens.agent_token_by_hash(h(text)) is None
    assert [t.token_prefix for t in await tokens.list_agent_tokens()] == ["kat_y", "kat_z"]
