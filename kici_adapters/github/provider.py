"""The GitHub provider behind the core's ``LockfileSource``, ``ChangedFilesSource`` and ``CloneTokenSource``.

One :class:`GitHubProvider` serves every registered GitHub App source. For each source it builds (and
reuses) a :class:`~kici_adapters.github.app.GitHubApp` from the ``privateKey`` secret (org ``__system__``,
scope ``__source__/<source id>``), so the installation-token cache survives across deliveries, while a
rotated key takes effect on the next call. All sources share one ``httpx.AsyncClient`` and one lock-file
cache.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx

from kici_adapters.github import client as gh
from kici_adapters.github.app import GitHubApp
from kici_adapters.github.changes import GitHubChangedFilesSource
from kici_adapters.github.lockfiles import (
    DEFAULT_MAX_BYTES,
    GitHubLockfileSource,
    LockfileCache,
    LockfileMissing,
)
from kici_core.errors import ConfigError, InvalidInput
from kici_core.ports import SecretStore
from kici_core.source_records import GitHubSource, LockfileFetch, RepoSource

__all__ = ["SECRET_ORG", "GitHubProvider", "source_scope"]

SECRET_ORG = "__system__"


def source_scope(source_id: str) -> str:
    """The secret scope of a source: ``__source__/<id>``."""
    return f"__source__/{source_id}"


@dataclass(frozen=True, slots=True)
class _Built:
    fingerprint: str
    lockfiles: GitHubLockfileSource
    changes: GitHubChangedFilesSource


class GitHubProvider:
    """Lock files, changed files and clone tokens for GitHub App sources.

    Args:
        secrets: where each source's ``privateKey`` is stored.
        http: a shared ``httpx.AsyncClient``; created and owned (see :meth:`aclose`) when omitted.
        default_api_url: ``GITHUB_API_URL``; a source's own ``api_url`` wins.
        lockfile_max_bytes: ``KICI_LOCKFILE_MAX_BYTES``.
        cache: the shared lock-file cache (``KICI_LOCKFILE_CACHE_MAX`` / ``_TTL_MS``).
        validate: optional lock-file check run before caching (see ``GitHubLockfileSource``).
        retry, timeout, clock, sleep: passed to every :class:`~kici_adapters.github.client.GitHubClient`.
    """

    def __init__(
        self,
        *,
        secrets: SecretStore,
        http: httpx.AsyncClient | None = None,
        default_api_url: str = gh.DEFAULT_API_URL,
        lockfile_max_bytes: int = DEFAULT_MAX_BYTES,
        cache: LockfileCache | None = None,
        validate: Callable[[bytes], object] | None = None,
        retry: gh.RetryPolicy | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._secrets = secrets
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()
        self._default_api_url = default_api_url
        self._max_bytes = lockfile_max_bytes
        self.cache = cache if cache is not None else LockfileCache(clock=clock)
        self._validate = validate
        self._retry = retry
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._built: dict[str, _Built] = {}

    async def aclose(self) -> None:
        """Close the shared HTTP client if this provider created it."""
        if self._owns_http:
            await self._http.aclose()

    async def app_for(self, source: GitHubSource) -> GitHubApp:
        """The :class:`GitHubApp` of ``source``, rebuilt when its key, App ID or API URL changed.

        Raises:
            ConfigError: no private key is stored for the source.
            InvalidInput: the stored key is unusable.
        """
        return (await self._for(source)).lockfiles.app

    async def fetch_lockfile(self, source: RepoSource, repo: str, ref: str) -> LockfileFetch:
        """``LockfileSource``: the raw lock file; ``content=None`` when GitHub says 404.

        Raises:
            UpstreamUnavailable: GitHub kept failing, or the App is not installed on ``repo``.
            InvalidInput: the file exceeds the size limit (``LockfileTooLarge``) or the source is not GitHub.
        """
        built = await self._for(_github(source))
        try:
            body, cached = await built.lockfiles.fetch_with_origin(repo, ref)
        except LockfileMissing:
            return LockfileFetch(content=None)
        return LockfileFetch(content=body, cached=cached)

    async def changed_files(
        self, source: RepoSource, repo: str, *, base: str | None, head: str, pull_number: int | None = None
    ) -> list[str]:
        """``ChangedFilesSource``: PR files when ``pull_number`` is given, else compare ``base...head``.

        Raises:
            UpstreamUnavailable: GitHub kept failing.
        """
        built = await self._for(_github(source))
        if pull_number is not None:
            return list(await built.changes.pull_request_files(repo, pull_number))
        return list(await built.changes.push_files(repo, before=base, after=head))

    async def clone_token(self, source: RepoSource, repo: str) -> str | None:
        """``CloneTokenSource``: an installation token for ``repo`` (valid at least five more minutes)."""
        built = await self._for(_github(source))
        return await built.lockfiles.app.installation_token(repo)

    async def _for(self, source: GitHubSource) -> _Built:
        pem = await self._secrets.get(SECRET_ORG, source_scope(source.id), "privateKey")
        if not pem:
            raise ConfigError(f"GitHub source {source.name!r} has no private key stored")
        api_url = source.api_url or self._default_api_url
        fingerprint = hashlib.sha256(f"{source.app_id}\0{api_url}\0{pem}".encode()).hexdigest()
        built = self._built.get(source.id)
        if built is not None and built.fingerprint == fingerprint:
            return built
        client = gh.GitHubClient(
            api_url=api_url,
            http=self._http,
            timeout=self._timeout,
            retry=self._retry,
            clock=self._clock,
            sleep=self._sleep,
        )
        app = GitHubApp(app_id=source.app_id, private_key=pem, client=client)
        built = _Built(
            fingerprint=fingerprint,
            lockfiles=GitHubLockfileSource(
                app=app, cache=self.cache, max_bytes=self._max_bytes, validate=self._validate
            ),
            changes=GitHubChangedFilesSource(app=app),
        )
        self._built[source.id] = built
        return built


def _github(source: RepoSource) -> GitHubSource:
    if not isinstance(source, GitHubSource):
        raise InvalidInput("not a GitHub App source")
    return source
