"""Fetching ``.kici/kici.lock.json`` through the contents API, with the lock-file cache.

Outcomes of :meth:`GitHubLockfileSource.fetch`:

* the raw bytes of the file (parsing is the core's job);
* :class:`LockfileMissing` for HTTP 404 or a directory at that path;
* :class:`LockfileTooLarge` (a :class:`~kici_core.errors.LockfileError`, i.e. corrupt) past the size cap;
* :class:`~kici_adapters.github.client.GitHubApiError` (``UpstreamUnavailable``) when GitHub keeps
  failing (401/403/429/5xx/network, after retries) — never confused with "missing".

Cache: key ``github:<owner/repo>:<ref>``; a full 40-hex SHA is immutable and kept for the TTL, any other
ref (branch, ``HEAD``) for at most 60 s. Misses and failures are never cached.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from kici_adapters import metrics
from kici_adapters.github import client as gh
from kici_adapters.github.app import GitHubApp
from kici_core.errors import LockfileError, NotFound

__all__ = [
    "DEFAULT_CACHE_MAX",
    "DEFAULT_CACHE_TTL_SECONDS",
    "DEFAULT_MAX_BYTES",
    "LOCKFILE_PATH",
    "SHORT_REF_TTL_SECONDS",
    "GitHubLockfileSource",
    "LockfileCache",
    "LockfileMissing",
    "LockfileTooLarge",
]

LOCKFILE_PATH = ".kici/kici.lock.json"
DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_CACHE_MAX = 500
DEFAULT_CACHE_TTL_SECONDS = 3600.0
SHORT_REF_TTL_SECONDS = 60.0
_FULL_SHA = re.compile(r"[0-9a-f]{40}")


class LockfileMissing(NotFound):
    """The repository has no lock file at that ref (``lockfile_missing``)."""

    def __init__(self, repo: str, ref: str) -> None:
        self.repo = repo
        self.ref = ref
        super().__init__(f"no {LOCKFILE_PATH} in {repo} at {ref}")


class LockfileTooLarge(LockfileError):
    """The lock file is larger than ``KICI_LOCKFILE_MAX_BYTES``; treated as corrupt."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__("", f"exceeded size cap of {limit} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    body: bytes
    expires_at: float


class LockfileCache:
    """A bounded LRU of lock-file bytes with per-entry expiry.

    Args:
        max_entries: ``KICI_LOCKFILE_CACHE_MAX``.
        ttl_seconds: ``KICI_LOCKFILE_CACHE_TTL_MS / 1000``; applies to full-SHA refs.
        short_ref_ttl_seconds: cap for any other ref (branch names, ``HEAD``).
        clock: epoch seconds.
    """

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_CACHE_MAX,
        ttl_seconds: float = DEFAULT_CACHE_TTL_SECONDS,
        short_ref_ttl_seconds: float = SHORT_REF_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self.short_ref_ttl_seconds = min(short_ref_ttl_seconds, ttl_seconds)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @staticmethod
    def key(provider: str, repo: str, ref: str) -> str:
        """``<provider>:<repo>:<ref>``; the provider prefix keeps providers from poisoning each other."""
        return f"{provider}:{repo}:{ref}"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        """The cached bytes, or ``None``; counts one hit or one miss."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            del self._entries[key]
            entry = None
        if entry is None:
            metrics.lockfile_cache_misses.inc()
            return None
        self._entries.move_to_end(key)
        metrics.lockfile_cache_hits.inc()
        return entry.body

    def put(self, key: str, ref: str, body: bytes) -> None:
        """Store ``body`` for ``key``; ``ref`` decides the lifetime (full SHA: TTL, else short)."""
        if self.max_entries <= 0:
            return
        ttl = self.ttl_seconds if _FULL_SHA.fullmatch(ref) else self.short_ref_ttl_seconds
        if ttl <= 0:
            return
        self._entries[key] = _Entry(body=body, expires_at=self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def _is_directory_listing(resp: gh.GitHubResponse) -> bool:
    if not resp.headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        return isinstance(json.loads(resp.body), list)
    except ValueError:
        return False


class GitHubLockfileSource:
    """Reads lock files from GitHub repositories with an App's installation token.

    Args:
        app: the GitHub App whose installation covers the repositories.
        cache: the lock-file cache; by default a fresh one on the client's clock.
        max_bytes: ``KICI_LOCKFILE_MAX_BYTES``.
        validate: optional check run before caching (e.g. the core's lock-file parser); if it raises, the
            bytes are not cached and the error propagates, so corrupt files are never cached.
    """

    def __init__(
        self,
        *,
        app: GitHubApp,
        cache: LockfileCache | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        validate: Callable[[bytes], object] | None = None,
    ) -> None:
        self.app = app
        # github.com is "github"; an Enterprise server gets its own namespace in a shared cache.
        host = urlsplit(app.client.api_url).netloc
        self.provider = "github" if app.client.api_url == gh.DEFAULT_API_URL else f"github@{host}"
        self.cache = cache if cache is not None else LockfileCache(clock=app.client.clock)
        self.max_bytes = max_bytes
        self._validate = validate

    async def fetch(self, repo: str, ref: str, *, installation_id: int | None = None) -> bytes:
        """The raw lock file of ``repo`` (``owner/name``) at ``ref`` (SHA, branch or ``HEAD``).

        Raises:
            LockfileMissing: HTTP 404, or the path is a directory.
            LockfileTooLarge: the file exceeds ``max_bytes``.
            AppNotInstalled: the App has no installation for ``repo``.
            GitHubApiError: GitHub kept failing (an ``UpstreamUnavailable``); not a missing file.
        """
        return (await self.fetch_with_origin(repo, ref, installation_id=installation_id))[0]

    async def fetch_with_origin(self, repo: str, ref: str, *, installation_id: int | None = None) -> tuple[bytes, bool]:
        """Like :meth:`fetch`, also saying whether the bytes came from the cache."""
        key = LockfileCache.key(self.provider, repo, ref)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        started = time.perf_counter()
        try:
            body = await self._download(repo, ref, installation_id)
        finally:
            metrics.lockfile_fetch_duration.observe(time.perf_counter() - started)
        if self._validate is not None:
            # parsing a large file is CPU work: keep it off the event loop
            await anyio.to_thread.run_sync(self._validate, body)
        self.cache.put(key, ref, body)
        return body, False

    async def _download(self, repo: str, ref: str, installation_id: int | None) -> bytes:
        try:
            resp = await self.app.client.request(
                "GET",
                f"{gh.repo_path(repo)}/contents/{LOCKFILE_PATH}",
                credentials=self.app.repo_credentials(repo, installation_id=installation_id),
                params={"ref": ref},
                accept=gh.RAW_MEDIA_TYPE,
                expect=frozenset({200, 404}),
                max_bytes=self.max_bytes,
            )
        except gh.ResponseTooLarge as exc:
            raise LockfileTooLarge(self.max_bytes) from exc
        if resp.status == 404 or _is_directory_listing(resp):
            raise LockfileMissing(repo, ref)
        return resp.body
