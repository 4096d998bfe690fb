"""Shared test environments for the admin API and kici-admin: the admin app over the in-memory fakes with a
token per role (reached through httpx's ASGI transport, no sockets), and a CLI harness that runs kici-admin's
requests against that app on an anyio blocking portal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kici_core.testing.fakes import (
    FakeBlobStore,
    FakeClock,
    FakeDeliveryInbox,
    FakeSecretStore,
    FakeSourceStore,
    FakeTokenStore,
)
from kici_core.token_records import AdminToken
from kici_runtime.admin_cli.cli import cli
from kici_runtime.orchestrator.admin import api as admin_api
from kici_runtime.orchestrator.admin.auth import token_hash
from kici_runtime.orchestrator.app import build_app
from kici_runtime.orchestrator.context import AppContext

OWNER, ADMIN, AUDITOR, SCOPED = "o" * 64, "a" * 64, "u" * 64, "s" * 64


def make_pem(bits: int = 2048) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


PEM = make_pem()


@dataclass
class Env:
    ctx: AppContext
    client: httpx.AsyncClient
    sources: FakeSourceStore
    secrets: FakeSecretStore
    tokens: FakeTokenStore
    inbox: FakeDeliveryInbox
    blobs: FakeBlobStore
    clock: FakeClock
    woken: list[int]

    async def call(self, method: str, path: str, token: str | None = OWNER, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.request(method, path, headers=headers, **kw)


def _ids() -> Any:
    n = iter(range(1, 10_000))
    return lambda: f"00000000-0000-4000-8000-{next(n):012d}"


async def make_env(**ctx_kw: Any) -> tuple[Env, httpx.AsyncClient]:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    blobs = FakeBlobStore()
    inbox = FakeDeliveryInbox(blobs, clock)
    sources, secrets, tokens = FakeSourceStore(clock), FakeSecretStore(), FakeTokenStore(clock)
    for tid, text, role, rk in (
        ("t-owner", OWNER, "owner", None),
        ("t-admin", ADMIN, "admin", None),
        ("t-aud", AUDITOR, "auditor", None),
        ("t-scoped", SCOPED, "admin", "github:42"),
    ):
        await tokens.create_admin_token(
            AdminToken(id=tid, label=tid, role=role, routing_key=rk),  # type: ignore[arg-type]
            token_hash(text),
        )
    woken: list[int] = []
    kw: dict[str, Any] = {
        "secret_key_configured": True,
        "tokens": tokens,
        "blobs": blobs,
        "sources": sources,
        "secrets": secrets,
        "inbox": inbox,
        "event_log": inbox,
        "clock": clock,
    }
    kw.update(ctx_kw)
    ctx = AppContext(mode="independent", ids=_ids(), wake_worker=lambda: woken.append(1), **kw)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build_app(ctx, admin_api.routes)), base_url="http://admin.test"
    )
    return Env(ctx, client, sources, secrets, tokens, inbox, blobs, clock, woken), client


class PortalTransport(httpx.BaseTransport):
    """Synchronous transport running an ASGI app's requests on a blocking portal's event loop."""

    def __init__(self, portal: BlockingPortal, app: Any) -> None:
        self.portal = portal
        self.inner = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def run() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            req = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            resp = await self.inner.handle_async_request(req)
            content = await resp.aread()
            return resp.status_code, list(resp.headers.raw), content

        status, headers, content = self.portal.call(run)
        return httpx.Response(status, headers=headers, content=content)


@dataclass
class Harness:
    env: Env
    portal: BlockingPortal
    transport: PortalTransport

    def run(
        self, *args: str, token: str | None = OWNER, input: str | None = None, env: dict[str, str] | None = None
    ) -> Result:
        head = ["--url", "http://admin.test"] + (["--token", token] if token else [])
        obj = {"transport": self.transport}
        return CliRunner().invoke(cli, [*head, *args], obj=obj, input=input, env=env, catch_exceptions=False)

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)


@contextmanager
def open_harness() -> Iterator[Harness]:
    """A CLI harness over a fresh admin environment; the app's client is closed on exit."""
    with start_blocking_portal(backend="asyncio") as portal:
        env, client = portal.call(make_env)
        app = client._transport.app  # type: ignore[attr-defined]
        yield Harness(env=env, portal=portal, transport=PortalTransport(portal, app))
        portal.call(client.aclose)
