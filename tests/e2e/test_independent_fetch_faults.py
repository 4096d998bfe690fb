"""Lock-file fetch failures through the real pipeline use case (``handling.handle_item``) with a short GitHub
retry policy, against PostgreSQL and a local GitHub: timeouts, dropped connections, 401 and 500 are retried,
recorded with their reason, parked ``failed`` when attempts run out (decision 10), and processed once replayed
after the fault clears. (The subprocess tests cover the same with the production retry policy for 401/500;
a timeout there would take the client's full 10 s x 4 attempts.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kici_adapters.github import client as gh_client
from kici_adapters.github.lockfiles import LockfileCache
from kici_adapters.github.provider import GitHubProvider
from kici_adapters.postgres.inbox import PgDeliveryInbox
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.secrets import PgSecretStore
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.storage import FilesystemBlobStore
from kici_core import handling, lockfile
from kici_core.delivery_records import Delivery
from kici_core.pipeline import Pipeline, Provider
from kici_core.source_records import GitHubSource
from tests.e2e.conftest import APP_ID, ORG, SECRET_KEY, github_world, install, new_delivery, push_body
from tests.support.github_server import GitHubServer, app_key
from tests.support.pg import database

__all__ = ["database"]

pytestmark = pytest.mark.anyio

REPO = "acme/faulty"
CONTENTS = f"/repos/{REPO}/contents/*"


@dataclass
class Harness:
    db: Database
    gh: GitHubServer
    inbox: PgDeliveryInbox
    pipeline: Pipeline

    async def accept(self) -> str:
        delivery = new_delivery()
        result = await self.inbox.accept(
            Delivery(
                org_id=ORG,
                delivery_id=delivery,
                routing_key=f"github:{APP_ID}",
                event="push",
                action=None,
                source="direct",
                provider="github",
                body=push_body(REPO),
                received_at=datetime.now(UTC),
            )
        )
        assert not result.duplicate
        return delivery

    async def attempt(self) -> list[str] | None:
        """Claim the one pending delivery and run it through the pipeline once."""
        items = await self.inbox.claim(worker_id="t", limit=10, lease_seconds=30)
        assert len(items) == 1, items
        return await handling.handle_item(items[0], inbox=self.inbox, pipeline=self.pipeline)

    async def row(self, delivery: str) -> dict[str, object]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT e.status, e.error_message, i.state, i.attempts, i.available_at > now() AS waiting, "
                "(SELECT count(*) FROM execution_runs r WHERE r.delivery_id = e.delivery_id) AS runs "
                "FROM event_log e JOIN delivery_inbox i ON i.event_log_id = e.id WHERE e.delivery_id = %s",
                (delivery,),
            )
            found = await cur.fetchone()
        assert found is not None
        return dict(found)

    async def due_now(self, delivery: str, *, attempts: int) -> None:
        """Pretend the backoff elapsed after ``attempts`` failed attempts."""
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE delivery_inbox SET available_at = now(), attempts = %s WHERE event_log_id = "
                "(SELECT id FROM event_log WHERE delivery_id = %s)",
                (attempts, delivery),
            )


@pytest.fixture
def gh() -> Iterator[GitHubServer]:
    server = github_world()
    install(server, REPO)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def harness(database: Database, gh: GitHubServer, tmp_path: Path) -> AsyncIterator[Harness]:
    sources = PgSourceStore(database)
    secrets = PgSecretStore(database, bytes.fromhex(SECRET_KEY))
    source_id = str(uuid.uuid4())
    await sources.add_github(
        GitHubSource(id=source_id, routing_key=f"github:{APP_ID}", name="acme-app", app_id=APP_ID, customer_id=ORG)
    )
    await secrets.put("__system__", f"__source__/{source_id}", "privateKey", app_key().private_pem)
    provider = GitHubProvider(
        secrets=secrets,
        default_api_url=gh.url,
        cache=LockfileCache(max_entries=0),
        validate=lockfile.parse_lockfile,
        timeout=0.3,
        retry=gh_client.RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.01),
    )
    pipeline = Pipeline(
        sources=sources,
        providers={
            "github": Provider(
                lockfiles=provider, changed_files=provider, repo_url=lambda s, r, p: f"https://github.com/{r}.git"
            )
        },
        ids=lambda: str(uuid.uuid4()),
        timer=time.perf_counter,
    )
    inbox = PgDeliveryInbox(database, FilesystemBlobStore(tmp_path / "blobs"))
    try:
        yield Harness(db=database, gh=gh, inbox=inbox, pipeline=pipeline)
    finally:
        await provider.aclose()


FAULTS: dict[str, tuple[str, Callable[[GitHubServer], None]]] = {
    "timeout": ("ReadTimeout", lambda gh: gh.delay(CONTENTS, 5, times=10_000)),
    "dropped": ("RemoteProtocolError", lambda gh: gh.drop(CONTENTS, times=10_000)),
    "401": ("HTTP 401", lambda gh: gh.fail(CONTENTS, 401, times=10_000, message="Bad credentials")),
    "500": ("HTTP 500", lambda gh: gh.fail(CONTENTS, 500, times=10_000)),
    "502": ("HTTP 502", lambda gh: gh.fail(CONTENTS, 502, times=10_000)),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_fetch_fault_is_retried_then_parked_then_replayed(harness: Harness, fault: str) -> None:
    h = harness
    reason, inject = FAULTS[fault]
    inject(h.gh)
    delivery = await h.accept()

    assert await h.attempt() is None
    row = await h.row(delivery)
    assert row["status"] == "received" and row["state"] == "pending" and row["waiting"], row
    assert reason in str(row["error_message"]) and row["attempts"] == 1
    assert len(h.gh.requests_for(CONTENTS)) >= 2  # the client retried within the attempt

    await h.due_now(delivery, attempts=handling.MAX_ATTEMPTS - 1)
    assert await h.attempt() is None
    row = await h.row(delivery)
    assert (row["status"], row["state"], row["runs"]) == ("failed", "failed", 0), row
    assert reason in str(row["error_message"])
    assert await h.inbox.claim(worker_id="t", limit=10, lease_seconds=30) == []  # parked: not retried by itself

    with h.gh._lock:
        h.gh._faults.clear()
    assert await h.inbox.replay(ORG, delivery)
    run_ids = await h.attempt()
    assert run_ids is not None and len(run_ids) == 1
    row = await h.row(delivery)
    assert (row["status"], row["state"], row["runs"]) == ("processed", "done", 1), row


async def test_not_found_is_missing_at_once(harness: Harness) -> None:
    h = harness
    with h.gh._lock:
        for key in [k for k in h.gh._files if k[0] == REPO]:
            del h.gh._files[key]
    delivery = await h.accept()
    assert await h.attempt() == []
    row = await h.row(delivery)
    assert (row["status"], row["state"], row["attempts"]) == ("lockfile_missing", "done", 1), row
