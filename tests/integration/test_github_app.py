"""GitHub App authentication against the local GitHub server: JWT, installations, token cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kici_adapters.github.app import (
    AppNotInstalled,
    GitHubApp,
    check_private_key,
    load_private_key,
    mint_app_jwt,
)
from kici_adapters.github.client import GitHubApiError, GitHubClient
from kici_core.errors import InvalidInput, UpstreamUnavailable
from tests.support.github_server import GitHubServer, ManualClock, RecordingSleep, app_key

APP_ID = 4242
REPO = "acme/app"
INSTALLATION = 77


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[GitHubServer]:
    with GitHubServer(clock=clock) as gh:
        gh.add_app(APP_ID, app_key().public_pem)
        gh.add_installation(INSTALLATION, app_id=APP_ID, repos=[REPO])
        gh.put_file(REPO, "main", "README.md", b"hello")
        yield gh
        assert gh.errors == []


def _app(server: GitHubServer, clock: ManualClock, sleep: RecordingSleep | None = None) -> GitHubApp:
    client = GitHubClient(api_url=server.url, clock=clock, sleep=sleep or RecordingSleep())
    return GitHubApp(app_id=APP_ID, private_key=app_key().private_pem, client=client)


# ------------------------------------------------------------------------------------------ keys + JWT
def _pem(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    fmt: serialization.PrivateFormat,
    enc: serialization.KeySerializationEncryption | None = None,
) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc or serialization.NoEncryption())


def test_check_private_key_accepts_pkcs1_and_pkcs8() -> None:
    pkcs1 = app_key().private_pem
    check_private_key(pkcs1)
    key = load_private_key(pkcs1)
    check_private_key(_pem(key, serialization.PrivateFormat.PKCS8))


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: b"not a key at all", "not PEM"),
        (lambda: app_key().public_pem, "public key"),
        (
            lambda: _pem(
                load_private_key(app_key().private_pem),
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "encrypted",
        ),
        (lambda: _pem(ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.PKCS8), "not an RSA"),
        (
            lambda: _pem(
                rsa.generate_private_key(public_exponent=65537, key_size=1024), serialization.PrivateFormat.PKCS8
            ),
            "too short",
        ),
        (lambda: b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", "could not be parsed"),
    ],
)
def test_check_private_key_rejects_with_clear_message(make: Callable[[], bytes], fragment: str) -> None:
    pem = make()
    with pytest.raises(InvalidInput) as info:
        check_private_key(pem)
    assert fragment in str(info.value)
    body_lines = [ln for ln in (pem.decode() if isinstance(pem, bytes) else pem).splitlines() if "-----" not in ln]
    assert not any(ln and ln in str(info.value) for ln in body_lines)  # never echoes key material


def test_jwt_claims() -> None:
    key = load_private_key(app_key().private_pem)
    token = mint_app_jwt(app_id=str(APP_ID), private_key=key, now=1_700_000_000.7)
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(
        token, app_key().public_pem, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert claims == {"iat": 1_700_000_000 - 30, "exp": 1_700_000_000 - 30 + 600, "iss": str(APP_ID)}


def test_app_repr_hides_key(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    assert "PRIVATE" not in repr(app)


# ------------------------------------------------------------------------------------------ GitHub calls
@pytest.mark.anyio
async def test_identity(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    async with app.client:
        ident = await app.identity()
    assert (ident.id, ident.slug, ident.owner) == (APP_ID, "kici-test", "acme")


@pytest.mark.anyio
async def test_wrong_key_fails_fast_without_retries(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    client = GitHubClient(api_url=server.url, clock=clock, sleep=sleep)
    app = GitHubApp(app_id=APP_ID, private_key=app_key(1).private_pem, client=client)
    async with client:
        with pytest.raises(GitHubApiError) as info:
            await app.identity()
    assert info.value.status == 401
    assert isinstance(info.value, UpstreamUnavailable)
    assert len(server.requests_for("/app")) == 1 and sleep.delays == []


@pytest.mark.anyio
async def test_clock_skew_is_corrected_once(server: GitHubServer, clock: ManualClock) -> None:
    client_clock = ManualClock(clock.now - 3600)  # the orchestrator's clock is an hour behind GitHub's
    app = _app(server, client_clock)
    async with app.client:
        assert (await app.identity()).id == APP_ID
        assert (await app.identity()).id == APP_ID
    statuses = len(server.requests_for("/app"))
    assert statuses == 3  # rejected once, then two successes with the corrected clock


@pytest.mark.anyio
async def test_installation_token_is_cached_until_refresh_margin(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    async with app.client:
        first = await app.installation_token(REPO)
        assert await app.installation_token(REPO) == first
        assert server.tokens_issued == 1
        assert len(server.requests_for(f"/repos/{REPO}/installation")) == 1
        clock.advance(3600 - 301)  # 301 s of validity left: still fresh
        assert await app.installation_token(REPO) == first
        clock.advance(2)  # 299 s left: inside the 5-minute refresh margin
        second = await app.installation_token(REPO)
    assert second != first
    assert server.tokens_issued == 2
    assert len(server.requests_for(f"/repos/{REPO}/installation")) == 1  # the mapping is remembered


@pytest.mark.anyio
async def test_known_installation_id_skips_lookup(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    async with app.client:
        token = await app.installation_token(REPO, installation_id=INSTALLATION)
    assert token.startswith("ghs_")
    assert server.requests_for("/repos/*/installation") == []


@pytest.mark.anyio
async def test_concurrent_callers_mint_one_token(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    tokens: list[str] = []

    async def take() -> None:
        tokens.append(await app.installation_token(REPO, installation_id=INSTALLATION))

    async with app.client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(take)
    assert len(set(tokens)) == 1 and len(tokens) == 5
    assert server.tokens_issued == 1


@pytest.mark.anyio
async def test_not_installed(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    async with app.client:
        with pytest.raises(AppNotInstalled) as info:
            await app.installation_token("acme/other")
    assert isinstance(info.value, UpstreamUnavailable)
    assert "acme/other" in str(info.value)


@pytest.mark.anyio
async def test_uninstalled_installation_is_forgotten(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    async with app.client:
        await app.installation_token(REPO)
        server.remove_installation(INSTALLATION)
        server.add_installation(88, app_id=APP_ID, repos=[REPO])
        clock.advance(3600)  # cached token expired; minting for 77 now 404s
        with pytest.raises(AppNotInstalled):
            await app.installation_token(REPO)
        await app.installation_token(REPO)  # looked up again: installation 88
    assert [r.path for r in server.requests_for("/app/installations/*/access_tokens")][
        -1
    ] == "/app/installations/88/access_tokens"


@pytest.mark.anyio
async def test_401_with_an_old_token_mints_a_new_one(server: GitHubServer, clock: ManualClock) -> None:
    sleep = RecordingSleep()
    app = _app(server, clock, sleep)
    path = f"/repos/{REPO}/contents/README.md"
    async with app.client:
        await app.installation_token(REPO)
        clock.advance(60)
        server.fail(path, 401, message="Bad credentials")
        resp = await app.client.request(
            "GET",
            path,
            credentials=app.repo_credentials(REPO),
            params={"ref": "main"},
            accept="application/vnd.github.raw+json",
        )
    assert resp.body == b"hello"
    assert server.tokens_issued == 2
    sent = [r.headers["authorization"] for r in server.requests_for(path)]
    assert len(sent) == 2 and sent[0] != sent[1]


@pytest.mark.anyio
async def test_401_with_a_fresh_token_retries_the_same_token(server: GitHubServer, clock: ManualClock) -> None:
    app = _app(server, clock)
    path = f"/repos/{REPO}/contents/README.md"
    async with app.client:
        server.fail(path, 401, message="Bad credentials")
        resp = await app.client.request(
            "GET",
            path,
            credentials=app.repo_credentials(REPO),
            params={"ref": "main"},
            accept="application/vnd.github.raw+json",
        )
    assert resp.body == b"hello"
    assert server.tokens_issued == 1  # replication lag: the young token is kept
