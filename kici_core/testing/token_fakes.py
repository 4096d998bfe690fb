"""In-memory admin and agent tokens, :class:`FakeTokenStore` (re-exported by :mod:`kici_core.testing.fakes`)."""

from __future__ import annotations

import dataclasses
import re

from kici_core import errors
from kici_core.testing.clock import FakeClock
from kici_core.token_records import AdminToken, AgentToken

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def _check_hash(token_hash: str) -> str:
    if not _HASH_RE.match(token_hash):
        raise errors.InvalidInput("token hash must be a lower-case hex sha256 digest")
    return token_hash


class FakeTokenStore:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self._clock = clock or FakeClock()
        self.admin: dict[str, tuple[AdminToken, str]] = {}
        self.agent: dict[str, tuple[AgentToken, str]] = {}

    async def create_admin_token(self, token: AdminToken, token_hash: str) -> AdminToken:
        _check_hash(token_hash)
        if token.id in self.admin or any(h == token_hash for _, h in self.admin.values()):
            raise errors.Conflict("Conflict: resource already exists")
        stored = dataclasses.replace(token, created_at=token.created_at or self._clock.now())
        self.admin[token.id] = (stored, token_hash)
        return stored

    async def ensure_bootstrap_admin_token(self, token_hash: str, new_id: str) -> bool:
        _check_hash(token_hash)
        same = [tok for tok, h in self.admin.values() if h == token_hash]
        if same:
            if same[0].label != "bootstrap":
                raise errors.Conflict("Conflict: resource already exists")
            if same[0].revoked:
                return False
            self.admin[same[0].id] = (
                dataclasses.replace(same[0], role="owner", routing_key=None, expires_at=None),
                token_hash,
            )
            return True
        active = sorted(
            (tok for tok, _h in self.admin.values() if tok.label == "bootstrap" and not tok.revoked),
            key=lambda t: t.created_at or self._clock.now(),
        )
        if active:
            tok = active[0]
            self.admin[tok.id] = (dataclasses.replace(tok, role="owner", routing_key=None, expires_at=None), token_hash)
            return True
        await self.create_admin_token(AdminToken(id=new_id, label="bootstrap", role="owner"), token_hash)
        return True

    async def has_active_admin_token(self) -> bool:
        return any(not tok.revoked for tok, _ in self.admin.values())

    async def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        now = self._clock.now()
        for tid, (tok, h) in self.admin.items():
            if h == token_hash and not tok.revoked and (tok.expires_at is None or tok.expires_at > now):
                used = dataclasses.replace(tok, last_used_at=now)
                self.admin[tid] = (used, h)
                return used
        return None

    async def list_admin_tokens(self) -> list[AdminToken]:
        # oldest first; ties (a clock that did not move) keep insertion order
        return sorted((t for t, _ in self.admin.values()), key=lambda t: t.created_at or self._clock.now())

    async def revoke_admin_token(self, token_id: str) -> bool:
        found = self.admin.get(token_id)
        if found is None or found[0].revoked:
            return False
        self.admin[token_id] = (dataclasses.replace(found[0], revoked=True), found[1])
        return True

    async def create_agent_token(self, token: AgentToken, token_hash: str) -> AgentToken:
        _check_hash(token_hash)
        if token.id in self.agent or any(h == token_hash for _, h in self.agent.values()):
            raise errors.Conflict("Conflict: resource already exists")
        stored = dataclasses.replace(token, created_at=token.created_at or self._clock.now())
        self.agent[token.id] = (stored, token_hash)
        return stored

    async def agent_token_by_hash(self, token_hash: str) -> AgentToken | None:
        now = self._clock.now()
        for tid, (tok, h) in self.agent.items():
            if h == token_hash and tok.revoked_at is None and (tok.expires_at is None or tok.expires_at > now):
                seen = dataclasses.replace(tok, last_seen_at=now)
                self.agent[tid] = (seen, h)
                return seen
        return None

    async def list_agent_tokens(self) -> list[AgentToken]:
        return sorted(
            (t for t, _ in self.agent.values() if t.revoked_at is None), key=lambda t: t.created_at or self._clock.now()
        )

    async def revoke_agent_token(self, token_id: str) -> bool:
        found = self.agent.get(token_id)
        if found is None or found[0].revoked_at is not None:
            return False
        self.agent[token_id] = (dataclasses.replace(found[0], revoked_at=self._clock.now()), found[1])
        return True
