"""What the HTTP app needs, gathered in one object by ``wiring.py`` (or by a test with fakes)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kici_core.jsontypes import JSONObject
from kici_core.ports import BlobStore, Clock, DeliveryInbox, EventLog, SecretStore, SourceStore, TokenStore
from kici_core.ratelimit import SlidingWindowLimiter
from kici_runtime.version import VERSION

MAX_BODY_BYTES = 26_214_400  # 25 MiB: every route
GENERIC_MAX_BODY_BYTES = 10 * 1024 * 1024  # the generic route's hard cap, before the per-source limit
UNVERIFIED_RPM = 60  # webhook requests per minute per client address that fail verification


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


async def _always_ready() -> bool:
    return True


def _noop() -> None:
    return None


def new_id() -> str:
    return str(uuid.uuid4())


GitHubAppCheck = Callable[[str, str, "str | None"], Awaitable[JSONObject]]
"""``(app_id, private_key_pem, api_url) -> {"name", "slug"}`` via ``GET /app``; raises a ``KiciError``."""


@dataclass(slots=True, kw_only=True)
class AppContext:
    mode: str  # platform | hybrid | independent
    sources: SourceStore
    secrets: SecretStore
    inbox: DeliveryInbox
    event_log: EventLog
    clock: Clock = field(default_factory=SystemClock)
    base_path: str = ""
    version: str = VERSION
    build_commit: str = "unknown"
    build_date: str = "unknown"
    started_at: float = field(default_factory=time.monotonic)
    wake_worker: Callable[[], None] = _noop
    check_database: Callable[[], Awaitable[bool]] = _always_ready
    ids: Callable[[], str] = new_id
    limiter: SlidingWindowLimiter = field(default_factory=SlidingWindowLimiter)  # verified deliveries, per source
    unverified_limiter: SlidingWindowLimiter = field(default_factory=SlidingWindowLimiter)  # per client address
    unverified_rpm: int = UNVERIFIED_RPM
    local_sources_enabled: bool = False  # KICI_DEV=true or KICI_ALLOW_LOCAL_SOURCES=true
    max_body_bytes: int = MAX_BODY_BYTES
    generic_max_body_bytes: int = GENERIC_MAX_BODY_BYTES
    body_timeout: float = 60.0  # seconds from the start of a request to the end of its body (408 beyond)
    trusted_proxy: bool = False
    # --- admin API (kici_runtime.orchestrator.admin.api) ---
    tokens: TokenStore | None = None
    blobs: BlobStore | None = None
    secret_key_configured: bool = False  # False: admin routes answer 503 (no KICI_SECRET_KEY)
    rotate_key: Callable[[], Awaitable[int]] | None = None  # re-encrypts scoped_secrets; returns the count
    migrate: Callable[[], Awaitable[list[str]]] | None = None  # applies pending migrations; returns names
    migration_status: Callable[[], Awaitable[list[JSONObject]]] | None = None  # [{name, status, appliedAt}]
    github_app_check: GitHubAppCheck | None = None  # None: GitHub sources are not validated against GitHub
    kick_agent_token: Callable[[str], Awaitable[int]] | None = None  # close live sockets of a revoked token
    release_agent: Callable[[str], Awaitable[bool]] | None = None  # unbind an agent id from its token
    webhook_public_url: str | None = None  # KICI_WEBHOOK_PUBLIC_URL: base of the webhook URL shown on add
    metric_snapshots: Callable[[], list[dict[str, float]]] = list  # processing children's counters for /metrics

    @property
    def direct_webhooks_enabled(self) -> bool:
        return self.mode in ("hybrid", "independent")
