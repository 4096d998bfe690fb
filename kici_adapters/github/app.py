"""GitHub App authentication: the App JWT, installation lookup and cached installation tokens.

The App JWT (RS256, ``iat`` = now - 30 s, ``exp`` = ``iat`` + 600 s, ``iss`` = App ID) authenticates
``GET /app``, ``GET /repos/{owner}/{repo}/installation`` and
``POST /app/installations/{id}/access_tokens``. Installation tokens are cached per installation until
fewer than five minutes of validity remain; the same token is the clone token handed to agents.
"""

from __future__ import annotations

import email.utils
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kici_adapters.github import client as gh
from kici_adapters.github import pem as pem_form
from kici_core.errors import InvalidInput, UpstreamUnavailable

__all__ = [
    "JWT_BACKDATE_SECONDS",
    "JWT_LIFETIME_SECONDS",
    "REFRESH_MARGIN_SECONDS",
    "AppIdentity",
    "AppNotInstalled",
    "GitHubApp",
    "InstallationToken",
    "check_private_key",
    "load_private_key",
    "mint_app_jwt",
]

JWT_BACKDATE_SECONDS = 30
JWT_LIFETIME_SECONDS = 600
REFRESH_MARGIN_SECONDS = 300.0
# A token this young that GitHub rejects is probably not replicated yet: retry with it, don't re-mint.
REPLICATION_GRACE_SECONDS = 5.0
_SKEW_MESSAGE = re.compile(r"'(Expiration time|Issued at)' claim")


class AppNotInstalled(UpstreamUnavailable):
    """The GitHub App has no installation covering the repository."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallationToken:
    """An installation access token and its lifetime (epoch seconds)."""

    installation_id: int
    token: str = field(repr=False)
    expires_at: float
    minted_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AppIdentity:
    """What ``GET /app`` says about the App."""

    id: int
    slug: str
    name: str
    owner: str | None


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    """Parse a GitHub App private key (PEM, PKCS#1 or PKCS#8, unencrypted RSA).

    Raises:
        InvalidInput: with a message that never quotes the key material.
    """
    data = pem_form.check_pem_form(pem)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidInput("private key is encrypted: provide the unencrypted PEM GitHub generated") from None
    except ValueError:
        raise InvalidInput("private key could not be parsed as a PEM RSA private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidInput("private key is not an RSA key: GitHub App keys are RSA (RS256)")
    if key.key_size < 2048:
        raise InvalidInput(f"private key is too short ({key.key_size} bits): GitHub App keys are 2048 bits")
    return key


def check_private_key(pem: str | bytes) -> None:
    """Validate a GitHub App private key locally (for ``kici-admin source add github``).

    Raises:
        InvalidInput: the key is unusable; the message says why without echoing the key.
    """
    load_private_key(pem)


def mint_app_jwt(*, app_id: str, private_key: rsa.RSAPrivateKey, now: float) -> str:
    """An RS256 App JWT: ``iat`` = now - 30 s, ``exp`` = ``iat`` + 600 s, ``iss`` = ``app_id``."""
    iat = int(now) - JWT_BACKDATE_SECONDS
    claims = {"iat": iat, "exp": iat + JWT_LIFETIME_SECONDS, "iss": app_id}
    return jwt.encode(claims, private_key, algorithm="RS256")


def _parse_expiry(value: object) -> float:
    if not isinstance(value, str):
        raise UpstreamUnavailable("GitHub returned an installation token without expires_at")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UpstreamUnavailable("GitHub returned an unreadable installation token expiry") from None


class GitHubApp:
    """One GitHub App: mints JWTs, finds installations, caches installation tokens.

    Args:
        app_id: the numeric App ID (as text or int).
        private_key: the App's PEM private key; validated here (``InvalidInput`` if unusable).
        client: the :class:`~kici_adapters.github.client.GitHubClient` to talk through; its clock is used.
        max_repos: bound on the remembered repository -> installation mappings.
    """

    def __init__(
        self, *, app_id: str | int, private_key: str | bytes, client: gh.GitHubClient, max_repos: int = 1000
    ) -> None:
        self.app_id = str(app_id)
        self.client = client
        self._key = load_private_key(private_key)
        self._skew = 0.0
        self._tokens: dict[int, InstallationToken] = {}
        self._repos: OrderedDict[str, int] = OrderedDict()
        self._max_repos = max_repos
        self._mint_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"GitHubApp(app_id={self.app_id!r}, api_url={self.client.api_url!r})"

    def app_jwt(self) -> str:
        """A fresh App JWT, corrected for any clock skew GitHub reported."""
        return mint_app_jwt(app_id=self.app_id, private_key=self._key, now=self.client.clock() + self._skew)

    async def identity(self) -> AppIdentity:
        """``GET /app``: proves the App ID and key work (``source add github --verify``).

        Raises:
            GitHubApiError: GitHub rejected the JWT or could not be reached.
        """
        body = (await self.client.request("GET", "/app", credentials=_JwtCredentials(self))).json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), int):
            raise gh.GitHubApiError("GitHub GET /app returned an unexpected body")
        owner = body.get("owner")
        login = owner.get("login") if isinstance(owner, dict) else None
        return AppIdentity(
            id=int(str(body["id"])),
            slug=str(body.get("slug") or ""),
            name=str(body.get("name") or ""),
            owner=login if isinstance(login, str) else None,
        )

    async def installation_id(self, owner_repo: str) -> int:
        """The installation of this App covering ``owner_repo`` (remembered once found).

        Raises:
            AppNotInstalled: GitHub answered 404.
            GitHubApiError: GitHub could not be reached or kept failing.
        """
        known = self._repos.get(owner_repo)
        if known is not None:
            self._repos.move_to_end(owner_repo)
            return known
        resp = await self.client.request(
            "GET",
            gh.repo_path(owner_repo) + "/installation",
            credentials=_JwtCredentials(self),
            expect=frozenset({200, 404}),
        )
        if resp.status == 404:
            raise AppNotInstalled(f"GitHub App {self.app_id} is not installed on {owner_repo}")
        body = resp.json()
        if not isinstance(body, dict) or not isinstance(body.get("id"), int):
            raise gh.GitHubApiError(f"GitHub returned no installation id for {owner_repo}")
        installation = int(str(body["id"]))
        self._remember(owner_repo, installation)
        return installation

    async def installation_token(self, owner_repo: str, *, installation_id: int | None = None) -> str:
        """An installation token for ``owner_repo`` (also the agents' clone token).

        ``installation_id`` (e.g. ``payload.installation.id`` of the delivery) skips the lookup.

        Raises:
            AppNotInstalled: no installation covers the repository.
            GitHubApiError: GitHub could not be reached or kept failing.
        """
        if installation_id is None:
            installation_id = await self.installation_id(owner_repo)
        else:
            self._remember(owner_repo, installation_id)
        return (await self.token_for_installation(installation_id)).token

    async def token_for_installation(self, installation_id: int) -> InstallationToken:
        """The cached token for ``installation_id``, minting one when < 5 min of validity remain.

        Raises:
            AppNotInstalled: the installation no longer exists (HTTP 404).
            GitHubApiError: GitHub could not be reached or kept failing.
        """
        cached = self._fresh(installation_id)
        if cached is not None:
            return cached
        async with self._mint_lock:
            cached = self._fresh(installation_id)  # another task may have minted meanwhile
            if cached is not None:
                return cached
            resp = await self.client.request(
                "POST",
                f"/app/installations/{installation_id}/access_tokens",
                credentials=_JwtCredentials(self),
                expect=frozenset({200, 201, 404}),
            )
            if resp.status == 404:
                self._forget_installation(installation_id)
                raise AppNotInstalled(f"GitHub App {self.app_id} has no installation {installation_id}")
            body = resp.json()
            if not isinstance(body, dict) or not isinstance(body.get("token"), str):
                raise gh.GitHubApiError("GitHub returned no installation token")
            token = InstallationToken(
                installation_id=installation_id,
                token=str(body["token"]),
                expires_at=_parse_expiry(body.get("expires_at")),
                minted_at=self.client.clock(),
            )
            self._tokens[installation_id] = token
            return token

    def forget_token(self, installation_id: int) -> None:
        """Drop the cached token of ``installation_id`` so the next call mints a new one."""
        self._tokens.pop(installation_id, None)

    def repo_credentials(self, owner_repo: str, *, installation_id: int | None = None) -> gh.Credentials:
        """Credentials that authenticate calls about ``owner_repo`` with its installation token."""
        return _InstallationCredentials(self, owner_repo, installation_id)

    def _fresh(self, installation_id: int) -> InstallationToken | None:
        token = self._tokens.get(installation_id)
        if token is None or token.expires_at - self.client.clock() < REFRESH_MARGIN_SECONDS:
            return None
        return token

    def _remember(self, owner_repo: str, installation_id: int) -> None:
        self._repos[owner_repo] = installation_id
        self._repos.move_to_end(owner_repo)
        while len(self._repos) > self._max_repos:
            self._repos.popitem(last=False)

    def _forget_installation(self, installation_id: int) -> None:
        self.forget_token(installation_id)
        for repo in [r for r, i in self._repos.items() if i == installation_id]:
            del self._repos[repo]

    def _note_skew(self, response: gh.GitHubResponse) -> bool:
        """Adopt GitHub's clock after a JWT time-claim rejection; ``True`` the first time only."""
        if self._skew or not _SKEW_MESSAGE.search(response.message()):
            return False
        date = response.headers.get("date")
        if not date:
            return False
        try:
            server_now = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return False
        self._skew = server_now - self.client.clock()
        return self._skew != 0.0


class _JwtCredentials:
    """App-JWT authentication; a 401 is retried only after a clock-skew correction."""

    def __init__(self, app: GitHubApp) -> None:
        self._app = app

    async def authorization(self) -> str:
        return f"Bearer {self._app.app_jwt()}"

    def rejected(self, authorization: str, response: gh.GitHubResponse) -> bool:
        return self._app._note_skew(response)


class _InstallationCredentials:
    """Installation-token authentication for one repository."""

    def __init__(self, app: GitHubApp, owner_repo: str, installation_id: int | None) -> None:
        self._app = app
        self._repo = owner_repo
        self._installation_id = installation_id
        self._token: InstallationToken | None = None

    async def authorization(self) -> str:
        if self._installation_id is None:
            self._installation_id = await self._app.installation_id(self._repo)
        self._token = await self._app.token_for_installation(self._installation_id)
        return f"token {self._token.token}"

    def rejected(self, authorization: str, response: gh.GitHubResponse) -> bool:
        token = self._token
        if token is not None and self._app.client.clock() - token.minted_at >= REPLICATION_GRACE_SECONDS:
            self._app.forget_token(token.installation_id)
        return True
