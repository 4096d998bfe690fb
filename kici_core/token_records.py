"""Admin and agent tokens: the records :class:`kici_core.ports.TokenStore` exchanges (only hashes are stored)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

AdminRole = Literal["owner", "admin", "auditor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminToken:
    """An admin API token; only the sha256 of the token text is stored."""

    id: str
    label: str
    role: AdminRole
    routing_key: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentToken:
    """An agent connection token (``kat_`` + 64 hex); only its hash and a prefix are stored."""

    id: str
    token_prefix: str
    labels: tuple[str, ...] = ()
    mandatory_labels: tuple[str, ...] = ()
    agent_type: Literal["static", "ephemeral"] = "static"
    created_by: str | None = None
    created_at: datetime | None = None
    last_seen_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
