"""The HTTP layer under every GitHub call: base URL, standard headers, retries, size caps.

One :class:`GitHubClient` wraps one ``httpx.AsyncClient`` (passed in and shared, or owned and closed by
:meth:`GitHubClient.aclose`). Callers hand it a path and a :class:`Credentials` object; it retries
429, 5xx, network errors and timeouts (and 401/403 when the credentials say a retry can help) with
exponential backoff, honours ``Retry-After`` and ``X-RateLimit-Reset`` up to a bound, and turns failures
that persist into :class:`GitHubApiError`, an :class:`~kici_core.errors.UpstreamUnavailable`.
Authorization values never appear in errors or logs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

import anyio
import httpx

from kici_core.errors import InvalidInput, KiciError, UpstreamUnavailable
from kici_core.jsontypes import JSONValue

__all__ = [
    "API_VERSION",
    "DEFAULT_API_URL",
    "JSON_MEDIA_TYPE",
    "RAW_MEDIA_TYPE",
    "Credentials",
    "GitHubApiError",
    "GitHubClient",
    "GitHubResponse",
    "ResponseTooLarge",
    "RetryPolicy",
    "repo_path",
]

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
JSON_MEDIA_TYPE = "application/vnd.github+json"
RAW_MEDIA_TYPE = "application/vnd.github.raw+json"
DEFAULT_USER_AGENT = "kici-orchestrator"
# Guard for responses without an explicit cap (error bodies, JSON listings).
_DEFAULT_BODY_CAP = 32 * 1024 * 1024


class GitHubApiError(UpstreamUnavailable):
    """GitHub could not be reached or kept refusing the request.

    ``status`` is the last HTTP status, or ``None`` when the last attempt failed below HTTP (connection
    refused, timeout, reset).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ResponseTooLarge(KiciError):
    """A GitHub response body exceeded the caller's byte limit."""

    exit_code = 65

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"response exceeded size cap of {limit} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry.

    ``attempts`` counts the first try. Backoff is ``base_delay * 2**n`` capped at ``max_delay``. A
    ``Retry-After`` or rate-limit reset longer than ``max_wait`` is not waited for: the call fails at once.
    """

    attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_wait: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GitHubResponse:
    """A completed GitHub response; header names are lower-case."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> JSONValue:
        """The body decoded as JSON.

        Raises:
            GitHubApiError: the body is not JSON.
        """
        try:
            value: JSONValue = json.loads(self.body)
        except ValueError as exc:
            raise GitHubApiError(f"GitHub returned a non-JSON body (HTTP {self.status})") from exc
        return value

    def message(self) -> str:
        """GitHub's ``message`` field from an error body, shortened; ``""`` if there is none."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return ""
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])[:200]
        return ""


class Credentials(Protocol):
    """Supplies the ``Authorization`` header for one logical request."""

    async def authorization(self) -> str:
        """The header value to send now (may mint a token)."""
        ...

    def rejected(self, authorization: str, response: GitHubResponse) -> bool:
        """GitHub answered 401 to ``authorization``; return whether another attempt can help."""
        ...


def repo_path(owner_repo: str) -> str:
    """``/repos/<owner>/<repo>`` with each part URL-encoded.

    Raises:
        InvalidInput: ``owner_repo`` is not ``owner/repo``.
    """
    owner, sep, repo = owner_repo.partition("/")
    if not sep or not owner or not repo or "/" in repo:
        raise InvalidInput(f"repository must be 'owner/repo', got {owner_repo!r}")
    return f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"


class GitHubClient:
    """HTTP access to one GitHub (github.com or an Enterprise server).

    Args:
        api_url: REST base URL, e.g. ``https://api.github.com`` or ``https://ghe.example.com/api/v3``.
        http: a shared ``httpx.AsyncClient``; when omitted the client creates and owns one.
        timeout: per-request timeout in seconds.
        retry: the retry policy.
        clock: wall-clock seconds since the epoch (injectable for tests).
        sleep: awaitable sleep used between retries (injectable for tests).
        user_agent: the ``User-Agent`` header.
    """

    def __init__(
        self,
        *,
        api_url: str = DEFAULT_API_URL,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if not api_url.startswith(("http://", "https://")):
            raise InvalidInput(f"GitHub API URL must be http(s), got {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()
        self._timeout = timeout
        self._sleep = sleep
        self._user_agent = user_agent

    async def aclose(self) -> None:
        """Close the underlying HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> GitHubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        credentials: Credentials,
        params: Mapping[str, str] | None = None,
        json_body: JSONValue = None,
        accept: str = JSON_MEDIA_TYPE,
        expect: frozenset[int] = frozenset({200}),
        max_bytes: int | None = None,
    ) -> GitHubResponse:
        """Send one request, retrying transient failures.

        Args:
            path: the path below the API URL, already encoded (see :func:`repo_path`).
            expect: statuses handed back to the caller (e.g. ``{200, 404}``).
            max_bytes: cap on the response body; larger bodies raise :class:`ResponseTooLarge`.

        Raises:
            GitHubApiError: a status outside ``expect`` that is not retryable, or retries ran out.
            ResponseTooLarge: the body exceeded ``max_bytes``.
        """
        policy = self.retry
        what = f"GitHub {method} {path}"
        last: str = "no attempt made"
        last_status: int | None = None
        for attempt in range(policy.attempts):
            authorization = await credentials.authorization()
            try:
                response = await self._send(method, path, authorization, params, json_body, accept, max_bytes)
            except httpx.TransportError as exc:
                last, last_status = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None
                delay = self._backoff(attempt)
            else:
                if response.status in expect:
                    return response
                last_status = response.status
                detail = response.message()
                last = f"HTTP {response.status}" + (f" ({detail})" if detail else "")
                if not self._retryable(response, credentials, authorization):
                    raise GitHubApiError(f"{what} failed: {last}", status=response.status)
                wait = self._server_wait(response)
                if wait is not None and wait > policy.max_wait:
                    raise GitHubApiError(
                        f"{what} failed: {last}; GitHub asks to wait {wait:.0f} s", status=response.status
                    )
                delay = wait if wait is not None else self._backoff(attempt)
            if attempt + 1 < policy.attempts:
                log.warning("%s: %s; retrying in %.1f s", what, last, delay)
                await self._sleep(max(0.0, delay))
        raise GitHubApiError(f"{what} failed after {policy.attempts} attempts: {last}", status=last_status)

    async def _send(
        self,
        method: str,
        path: str,
        authorization: str,
        params: Mapping[str, str] | None,
        json_body: JSONValue,
        accept: str,
        max_bytes: int | None,
    ) -> GitHubResponse:
        headers = {
            "Accept": accept,
            "Authorization": authorization,
            "User-Agent": self._user_agent,
            "X-GitHub-Api-Version": API_VERSION,
        }
        cap = max_bytes if max_bytes is not None else _DEFAULT_BODY_CAP
        async with self._http.stream(
            method,
            self.api_url + path,
            params=dict(params) if params else None,
            json=json_body,
            headers=headers,
            timeout=self._timeout,
            follow_redirects=True,
        ) as resp:
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > cap and resp.is_success:
                raise ResponseTooLarge(cap)
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    if resp.is_success:
                        raise ResponseTooLarge(cap)
                    break  # an oversized error body: keep what we have for the message
                chunks.append(chunk)
            return GitHubResponse(
                status=resp.status_code,
                headers={k.lower(): v for k, v in resp.headers.items()},
                body=b"".join(chunks),
            )

    def _retryable(self, response: GitHubResponse, credentials: Credentials, authorization: str) -> bool:
        status = response.status
        if status == 401:
            return credentials.rejected(authorization, response)
        return status in (403, 429) or status >= 500

    def _server_wait(self, response: GitHubResponse) -> float | None:
        """Seconds GitHub asked us to wait (``Retry-After`` or an exhausted rate limit), if any."""
        retry_after = response.headers.get("retry-after", "").strip()
        if retry_after.isdigit():
            return float(retry_after)
        reset = response.headers.get("x-ratelimit-reset", "").strip()
        if response.headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
            return max(0.0, float(reset) - self.clock())
        return None

    def _backoff(self, attempt: int) -> float:
        return float(min(self.retry.max_delay, self.retry.base_delay * (2**attempt)))
