"""GitHubProvider through the core's provider ports, with App keys from a secret store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kici_adapters.github.client import GitHubApiError
from kici_adapters.github.lockfiles import LOCKFILE_PATH, LockfileTooLarge
from kici_adapters.github.provider import SECRET_ORG, GitHubProvider, source_scope
from kici_core.errors import ConfigError, InvalidInput
from kici_core.ports import ChangedFilesSource, CloneTokenSource, LockfileSource
from kici_core.source_records import GenericSource, GitHubSource
from kici_core.testing.fakes import FakeSecretStore
from tests.support.github_server import GitHubServer, ManualClock, app_key

APP_ID = 4242
REPO = "acme/app"
SHA = "c" * 40


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[GitHubServer]:
    with GitHubServer(clock=clock, prefix="/api/v3") as gh:
        gh.add_app(APP_ID, app_key().public_pem)
        gh.add_installation(77, app_id=APP_ID, repos=[REPO])
        gh.put_file(REPO, SHA, LOCKFILE_PATH, b"{}")
        gh.set_compare(REPO, "1" * 40, SHA, ["a.txt"])
        gh.set_pull_files(REPO, 9, ["b.txt"])
        yield gh
        assert gh.errors == []


def _source(server: GitHubServer) -> GitHubSource:
    return GitHubSource(id="src-1", routing_key=f"github:{APP_ID}", name="acme", app_id=str(APP_ID), api_url=server.url)


async def _secrets(pem: str) -> FakeSecretStore:
    store = FakeSecretStore()
    await store.put(SECRET_ORG, source_scope("src-1"), "privateKey", pem)
    return store


@pytest.mark.anyio
async def test_ports(server: GitHubServer, clock: ManualClock) -> None:
    provider = GitHubProvider(
        secrets=await _secrets(app_key().private_pem), clock=clock, default_api_url="https://unused.invalid"
    )
    lockfiles: LockfileSource = provider
    changes: ChangedFilesSource = provider
    tokens: CloneTokenSource = provider
    src = _source(server)
    try:
        first = await lockfiles.fetch_lockfile(src, REPO, SHA)
        again = await lockfiles.fetch_lockfile(src, REPO, SHA)
        missing = await lockfiles.fetch_lockfile(src, REPO, "d" * 40)
        pushed = await changes.changed_files(src, REPO, base="1" * 40, head=SHA)
        pulled = await changes.changed_files(src, REPO, base="main", head=SHA, pull_number=9)
        token = await tokens.clone_token(src, REPO)
    finally:
        await provider.aclose()
    assert (first.content, first.cached) == (b"{}", False)
    assert (again.content, again.cached) == (b"{}", True)
    assert missing.content is None
    assert pushed == ["a.txt"] and pulled == ["b.txt"]
    assert token is not None and token.startswith("ghs_")
    assert server.tokens_issued == 1  # one App object per source: the token cache is shared


@pytest.mark.anyio
async def test_size_limit_and_key_rotation(server: GitHubServer, clock: ManualClock) -> None:
    server.put_file(REPO, "big", LOCKFILE_PATH, b"z" * 64)
    secrets = await _secrets(app_key(1).private_pem)  # wrong key first
    provider = GitHubProvider(secrets=secrets, clock=clock, lockfile_max_bytes=10)
    src = _source(server)
    try:
        with pytest.raises(GitHubApiError) as info:
            await provider.clone_token(src, REPO)
        assert info.value.status == 401
        await secrets.put(SECRET_ORG, source_scope("src-1"), "privateKey", app_key().private_pem)
        assert await provider.clone_token(src, REPO)  # the rotated key is picked up without restart
        with pytest.raises(LockfileTooLarge):
            await provider.fetch_lockfile(src, REPO, "big")
    finally:
        await provider.aclose()


@pytest.mark.anyio
async def test_misconfigured_sources(server: GitHubServer, clock: ManualClock) -> None:
    provider = GitHubProvider(secrets=FakeSecretStore(), clock=clock)
    try:
        with pytest.raises(ConfigError):
            await provider.fetch_lockfile(_source(server), REPO, SHA)
        generic = GenericSource(id="g", org_id="o", name="n", routing_key="generic:o:g")
        with pytest.raises(InvalidInput):
            await provider.fetch_lockfile(generic, REPO, SHA)
    finally:
        await provider.aclose()
