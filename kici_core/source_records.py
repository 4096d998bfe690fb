"""Webhook sources and what is read through them: the records :class:`kici_core.ports.SourceStore` and the
provider ports (:class:`kici_core.ports.LockfileSource`, ...) exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from kici_core.jsontypes import JSONObject


@dataclass(frozen=True, slots=True, kw_only=True)
class GitHubSource:
    """A GitHub App registered as a webhook source (``sources`` row). Secrets live in the SecretStore under
    org ``__system__``, scope ``__source__/<id>``, keys ``privateKey`` and ``webhookSecret``."""

    id: str
    routing_key: str  # "github:<appId>"
    name: str
    app_id: str
    customer_id: str = "__default__"
    api_url: str | None = None  # GitHub Enterprise API base; None = the configured default
    slug: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GenericSource:
    """A generic or local webhook source (``generic_webhook_sources`` row). Its secret (HMAC secret, bearer
    token or API key) lives in the SecretStore under org ``__system__``, scope ``__webhook__/<id>``; only
    non-secret settings are in ``verification_config``."""

    id: str
    org_id: str
    name: str
    routing_key: str  # "generic:<orgId>:<id>"
    provider_type: Literal["generic", "local"] = "generic"
    verification_method: str = "hmac_sha256"
    verification_config: JSONObject = field(default_factory=dict)
    event_type_header: str | None = "X-Event-Type"
    event_type_path: str | None = None
    idempotency_key_header: str | None = None
    idempotency_key_path: str | None = None
    dedup_window_seconds: int = 300
    max_payload_bytes: int = 1_048_576
    allowed_events: tuple[str, ...] | None = None
    enabled: bool = True
    rate_limit_rpm: int = 600
    git_config: JSONObject | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None


RepoSource = GitHubSource | GenericSource
"""The source a repository is read through: a GitHub App, or a ``local`` source naming a ``file://`` repo."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LockfileFetch:
    """Result of a lock-file fetch: ``content`` None means the file does not exist (HTTP 404)."""

    content: bytes | None
    cached: bool = False
