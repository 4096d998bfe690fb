"""kici-admin against the real admin app over the fakes: CliRunner + a sync httpx transport that hands each
request to the ASGI app on an anyio blocking portal (no sockets)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from click.testing import CliRunner, Result

from kici_core import errors
from kici_core.delivery_records import Delivery, DeliveryOutcome
from kici_runtime.admin_cli.cli import cli
from kici_runtime.admin_cli.client import human_bytes
from tests.unit.test_admin_api import AUDITOR, OWNER, PEM, Env, make_env

GH_SECRET = "whsec-super-secret-value-9876"


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


@pytest.fixture
def h() -> Iterator[Harness]:
    with start_blocking_portal(backend="asyncio") as portal:
        env, client = portal.call(make_env)
        app = client._transport.app  # type: ignore[attr-defined]
        yield Harness(env=env, portal=portal, transport=PortalTransport(portal, app))
        portal.call(client.aclose)


def add_github(h: Harness, tmp_path: Path, *extra: str) -> Result:
    key = tmp_path / "key.pem"
    key.write_text(PEM)
    return h.run(
        "source",
        "add",
        "github",
        "--name",
        "my-org",
        "--app-id",
        "123456",
        "--private-key",
        f"@{key}",
        "--webhook-secret",
        GH_SECRET,
        *extra,
    )


# ------------------------------------------------------------------------------------------ global
def test_missing_token_and_help() -> None:
    result = CliRunner().invoke(cli, ["source", "list"])
    assert result.exit_code == 1 and result.output.strip() == "Error: --token or KICI_ADMIN_TOKEN is required"
    assert CliRunner().invoke(cli, ["source", "--help"]).exit_code == 0
    assert "0.1.0" in CliRunner().invoke(cli, ["-V"]).output


def test_kici_admin_loads_no_server_database_or_key_code() -> None:
    """kici-admin is an HTTP client: starting it imports nothing of the server, no database driver and no
    cryptography or JWT library (a fresh interpreter, as the console script starts)."""
    probe = (
        "import sys; import kici_runtime.admin_cli.cli; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'psycopg_pool', 'cryptography', 'jwt', 'starlette', 'uvicorn') "
        "or m.startswith(('kici_runtime.orchestrator', 'kici_runtime.config.settings', 'kici_adapters.postgres')))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [], f"kici-admin imported {out.stdout.strip()}"


def test_version_comes_from_the_package_metadata() -> None:
    out = CliRunner().invoke(cli, ["-V"]).output
    assert out.strip() == f"kici-admin, version {metadata.version('kici')}"


def test_env_token_and_http_errors(h: Harness) -> None:
    r = h.run("source", "list", token=None, env={"KICI_ADMIN_TOKEN": OWNER})
    assert r.exit_code == 0 and "No sources configured." in r.output
    r = h.run("source", "list", token="wrong")
    assert r.exit_code == 1 and r.output.strip() == "Error: HTTP 401: Invalid or expired token"
    r = h.run("token", "list", token=AUDITOR)
    assert r.exit_code == 1 and 'HTTP 403: Role "auditor" does not have permission "token.manage"' in r.output


def test_unreachable_server_exit_code() -> None:
    r = CliRunner().invoke(cli, ["--url", "http://127.0.0.1:9", "--token", "x", "source", "list"])
    assert r.exit_code == 69 and r.output.startswith("Error: cannot reach the orchestrator")
    assert "Traceback" not in r.output


# ------------------------------------------------------------------------------------------ sources
def test_source_add_github_as_in_the_guide(h: Harness, tmp_path: Path) -> None:
    r = add_github(h, tmp_path)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "Source added: github:123456 (my-org)"
    assert "Webhook URL:  (unavailable — webhook-public-url-not-set)" in r.output
    assert GH_SECRET not in r.output and "PRIVATE KEY" not in r.output
    sid = next(iter(h.env.sources.github.values())).id
    assert h.env.secrets.values[("__system__", f"__source__/{sid}", "privateKey")] == PEM.strip()

    r = h.run("source", "list")
    lines = r.output.splitlines()
    assert lines[0] == "GitHub sources:"
    assert lines[1].startswith("  github:123456        my-org                         (github) secret …9876")
    assert "Tip:" not in r.output
    assert GH_SECRET not in r.output
    r = h.run("source", "list", "--json")
    doc = json.loads(r.output)
    assert doc["generic"] == [] and doc["github"][0]["routingKey"] == "github:123456"
    assert GH_SECRET not in r.output

    r = h.run("source", "show", "github:123456")
    assert "App ID:       123456" in r.output and GH_SECRET not in r.output
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "123456", "--private-key", PEM)
    assert r.exit_code == 1 and r.output.strip() == (
        f'Error: source github:123456 ("my-org") already exists (id {sid}, routing key github:123456); '
        "change it with `kici-admin source update github:123456 ...` or remove it with "
        "`kici-admin source remove github:123456`"
    )


def test_source_add_github_leaves_parsing_the_key_to_the_orchestrator(h: Harness) -> None:
    """The CLI checks only the key's form (no cryptography in kici-admin); the orchestrator parses it and
    answers 400 with the field path, and nothing is stored."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    short = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "1", "--private-key", short)
    assert r.exit_code == 1 and r.output.startswith("Error: HTTP 400: "), r.output
    assert "privateKey private key is too short (1024 bits)" in r.output and "PRIVATE KEY-----" not in r.output
    assert h.env.sources.github == {}


def test_source_add_github_checks_key_locally(h: Harness, tmp_path: Path) -> None:
    r = h.run("source", "add", "github", "--name", "x", "--private-key", PEM)
    assert r.output.strip() == "Error: --app-id is required (or use --manifest for one-click setup)"
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "1")
    assert r.output.strip() == "Error: Private key is required (--private-key, --stdin, or --from-env)"
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "1", "--private-key", "garbage-key-material")
    assert r.exit_code == 65 and "not PEM" in r.output and "garbage-key-material" not in r.output
    assert h.env.sources.github == {}
    r = h.run(
        "source",
        "add",
        "github",
        "--name",
        "x",
        "--app-id",
        "1",
        "--from-env",
        "KICI_TEST_PEM",
        env={"KICI_TEST_PEM": PEM},
    )
    assert r.exit_code == 0, r.output
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "2", "--stdin", input=PEM)
    assert r.exit_code == 0, r.output
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "3", "--from-env", "NOPE_NOT_SET")
    assert r.output.strip() == "Error: Environment variable NOPE_NOT_SET is not set"


def test_source_add_github_contacts_github_only_with_verify(h: Harness, tmp_path: Path) -> None:
    asked: list[str] = []

    async def check(app_id: str, pem: str, api_url: str | None) -> dict[str, Any]:
        asked.append(app_id)
        if app_id == "99":
            raise errors.UpstreamUnavailable("GitHub API unreachable: ConnectError")
        return {"name": "KiCI CI", "slug": "kici-ci"}

    h.env.ctx.github_app_check = check
    r = add_github(h, tmp_path)
    assert r.exit_code == 0 and asked == [] and "Verified" not in r.output
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "7", "--private-key", PEM, "--verify")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[:2] == [
        "Source added: github:7 (KiCI CI)",
        "  Verified with GitHub: the key belongs to App 7 (KiCI CI).",
    ]
    r = h.run("source", "add", "github", "--name", "x", "--app-id", "99", "--private-key", PEM, "--verify")
    assert r.exit_code == 1 and r.output.strip() == (
        "Error: HTTP 400: GitHub API validation failed: GitHub API unreachable: ConnectError "
        "(without --verify the App is registered without contacting GitHub)"
    )
    assert asked == ["7", "99"]


def test_source_update_rotate_and_remove(h: Harness, tmp_path: Path) -> None:
    add_github(h, tmp_path)
    r = h.run("source", "rotate-secret", "github:123456", "--webhook-secret", "whsec-brand-new-1111")
    assert r.exit_code == 0 and r.output.startswith("Webhook secret rotated: github:123456")
    assert "whsec-brand-new" not in r.output
    assert "[rotating]" in h.run("source", "list").output
    r = h.run("source", "update", "github:123456", "--drop-previous-secret", "--name", "renamed")
    assert r.output.strip() == "Source updated: github:123456"
    assert "[rotating]" not in h.run("source", "list").output
    r = h.run("source", "get-webhook-secret", "github:123456")
    assert r.output.strip() == "whsec-brand-new-1111"
    r = h.run("source", "update", "github:123456")
    assert r.exit_code == 1 and "no fields to update" in r.output
    r = h.run("source", "remove", "github:123456", input="n\n")
    assert r.output.endswith('Remove source "github:123456"? (y/N) n\nCancelled.\n')
    r = h.run("source", "remove", "github:123456", "--yes")
    assert r.output.strip() == "Source removed: github:123456" and h.env.sources.github == {}
    r = h.run("source", "remove", "github:1", "--hard", "--yes")
    assert r.exit_code == 1 and "--hard" in r.output


def test_generic_source_commands(h: Harness, tmp_path: Path) -> None:
    r = h.run(
        "source",
        "add",
        "generic",
        "--org",
        "acme",
        "--name",
        "deploys",
        "--secret",
        "gen-secret-4242",
        "--allowed-events",
        "deploy,rollback",
        "--rate-limit",
        "60",
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Generic source created:\n  ID:")
    assert "Routing key:  generic:acme:" in r.output and "Enabled:      yes" in r.output
    assert "gen-secret-4242" not in r.output and "Secret:       …4242" in r.output
    assert "/webhook/acme/generic/deploys" in r.output
    sid = next(iter(h.env.sources.generic))
    assert h.env.secrets.values[("__system__", f"__webhook__/{sid}", "secret")] == "gen-secret-4242"

    r = h.run("source", "list", "--org", "acme")
    assert "Generic sources:" in r.output and sid in r.output and "enabled" in r.output
    assert "Tip:" not in r.output
    assert h.run("source", "disable", sid).output.strip() == f"Generic source disabled: {sid}"
    assert " disabled " in h.run("source", "list", "--org", "acme").output
    assert h.run("source", "enable", sid).output.strip() == f"Generic source enabled: {sid}"

    r = h.run("source", "rotate-secret", sid, "--secret", "gen-secret-next-7777")
    assert r.exit_code == 0, r.output
    assert h.env.secrets.values[("__system__", f"__webhook__/{sid}", "secret")] == "gen-secret-next-7777"
    r = h.run("source", "show", sid, "--json")
    doc = json.loads(r.output)
    assert doc["verificationConfig"] == {"secretRef": True, "secretFingerprint": "…7777"}
    assert "gen-secret" not in h.run("source", "get", sid).output

    r = h.run("source", "remove", sid, "--generic", "--yes")
    assert r.output.strip() == f"Generic source soft-deleted: {sid}"
    r = h.run("source", "list", "--org", "acme", "--include-deleted")
    assert "[deleted]" in r.output
    r = h.run("source", "remove", sid, "--generic", "--hard", "--yes")
    assert r.output.strip() == f"Generic source permanently deleted: {sid}"
    r = h.run("source", "show", sid)
    assert r.exit_code == 1 and r.output.strip() == "Error: HTTP 404: Source not found"


def test_generic_sources_of_every_org_update_and_duplicates(h: Harness, tmp_path: Path) -> None:
    ids = {}
    for org in ("acme", "beta"):
        r = h.run(
            "source", "add", "generic", "--org", org, "--name", "deploys", "--secret", "gen-secret-4242", "--json"
        )
        ids[org] = json.loads(r.output)["source"]["id"]
    r = h.run("source", "list")  # no --org: every org
    assert ids["acme"] in r.output and ids["beta"] in r.output and "Tip:" not in r.output
    r = h.run("source", "list", "--org", "beta")
    assert ids["beta"] in r.output and ids["acme"] not in r.output

    r = h.run("source", "add", "generic", "--org", "acme", "--name", "deploys", "--secret", "other-secret-1")
    assert r.exit_code == 1 and r.output.strip() == (
        f'Error: source "deploys" in org acme already exists (id {ids["acme"]}, routing key '
        f"generic:acme:{ids['acme']}); change it with `kici-admin source update-generic {ids['acme']} ...`"
    )

    sid = ids["acme"]
    r = h.run("source", "update-generic", sid)
    assert r.exit_code == 1 and r.output.strip() == "Error: no fields to update. Provide at least one option."
    r = h.run("source", "update-generic", sid, "--secret", "new-secret-5555")
    assert r.exit_code == 1 and r.output.strip() == (
        "Error: --verification is required when updating --secret (needed to format the config correctly)"
    )
    r = h.run(
        "source",
        "update-generic",
        sid,
        "--verification",
        "bearer_token",
        "--secret",
        "tok-new-5555",
        "--rate-limit",
        "30",
        "--allowed-events",
        "deploy,rollback",
        "--name",
        "releases",
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Generic source updated: {sid}\n") and "Verification: bearer_token" in r.output
    assert "tok-new" not in r.output and "Secret:       …5555" in r.output
    stored = h.env.sources.generic[sid]
    assert (stored.name, stored.rate_limit_rpm, stored.allowed_events) == ("releases", 30, ("deploy", "rollback"))
    assert h.env.secrets.values[("__system__", f"__webhook__/{sid}", "token")] == "tok-new-5555"
    assert ("__system__", f"__webhook__/{sid}", "secret") not in h.env.secrets.values
    r = h.run("source", "update-generic", sid, "--allowed-events", "", "--json")
    assert json.loads(r.output)["source"]["allowedEvents"] is None
    r = h.run("source", "update-generic", ids["beta"], "--name", "other")
    assert r.exit_code == 0
    r = h.run("source", "update-generic", sid, "--local-repo", str(tmp_path), "--clear-git-config")
    assert r.exit_code == 1 and "exclude each other" in r.output
    r = h.run("source", "update-generic", "no-such-id", "--name", "x")
    assert r.exit_code == 1 and r.output.strip() == "Error: HTTP 404: Source not found"


def test_local_source_and_validation_error(h: Harness, tmp_path: Path) -> None:
    h.env.ctx.local_sources_enabled = True
    r = h.run(
        "source",
        "add",
        "generic",
        "--org",
        "acme",
        "--name",
        "repo",
        "--local-repo",
        str(tmp_path),
        "--secret",
        "s3cret-local",
        "--json",
    )
    doc = json.loads(r.output)["source"]
    assert doc["providerType"] == "local" and doc["gitConfig"]["url"] == tmp_path.resolve().as_uri()
    assert doc["verificationMethod"] == "hmac_sha256"
    r = h.run("source", "add", "generic", "--org", "acme", "--name", "nosecret")
    assert r.exit_code == 1
    assert r.output.strip() == (
        "Error: HTTP 400: Validation error: verificationConfig secret is required for hmac_sha256"
    )


# ------------------------------------------------------------------------------------------ event log
def _seed(h: Harness) -> None:
    async def seed() -> None:
        env = h.env
        for i, (event, size) in enumerate((("push", 10), ("pull_request", 3000))):
            await env.inbox.accept(
                Delivery(
                    org_id="acme",
                    delivery_id=f"d-{i}",
                    routing_key="github:123456",
                    event=event,
                    action="opened" if event == "pull_request" else None,
                    source="direct",
                    provider="github",
                    body=json.dumps({"pad": "x" * size, "token": "not-a-secret"}).encode(),
                    received_at=env.clock.now() + timedelta(seconds=i),
                )
            )
        [item, _] = await env.inbox.claim(worker_id="w", limit=2, lease_seconds=30)
        trace: dict[str, Any] = {
            "eventType": "push",
            "action": None,
            "matchedWorkflows": ["ci"],
            "totalWorkflows": 2,
            "decisions": [
                {
                    "workflowName": "ci",
                    "matched": True,
                    "matchedTrigger": 0,
                    "summary": "Trigger conditions met",
                    "checksCount": 1,
                    "triggers": [],
                },
                {
                    "workflowName": "deploy",
                    "matched": False,
                    "matchedTrigger": None,
                    "summary": "No matching trigger",
                    "checksCount": 2,
                    "triggers": [
                        {
                            "index": 0,
                            "triggerType": "push",
                            "matched": False,
                            "reason": "branch not matched",
                            "checks": [
                                {"check": "event type", "pattern": "push", "value": "push", "passed": True},
                                {
                                    "check": "branch",
                                    "pattern": "release/*",
                                    "value": "main",
                                    "passed": False,
                                    "reason": "branch not matched",
                                },
                            ],
                        },
                        {"index": 1, "triggerType": "tag", "matched": False, "reason": "not a tag push", "checks": []},
                    ],
                },
            ],
        }
        await env.inbox.complete(
            item,
            DeliveryOutcome(
                status="processed", matched_count=1, repo_identifier="o/r", ref="refs/heads/main", decision_trace=trace
            ),
            [],
        )

    h.call(seed)


def test_event_log_list_table(h: Harness) -> None:
    assert h.run("event-log", "list").output.strip() == "No deliveries found."
    _seed(h)
    r = h.run("event-log", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == [
        "received_at",
        "delivery_id",
        "routing_key",
        "event",
        "source",
        "status",
        "matched",
        "size",
    ]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == [
        "2026-03-01",
        "00:00:01",
        "d-1",
        "github:123456",
        "pull_request:opened",
        "direct",
        "received",
        "0",
        "3.0KB",
    ]
    assert lines[3].split()[2:] == ["d-0", "github:123456", "push", "direct", "processed", "1", "46B"]
    assert lines[-2:] == ["", "Showing 2 of 2 (offset 0, limit 50)"]
    r = h.run("event-log", "list", "--event", "push", "--limit", "1", "--json")
    doc = json.loads(r.output)
    assert [d["deliveryId"] for d in doc["deliveries"]] == ["d-0"] and doc["limit"] == 1
    r = h.run("event-log", "list", "--since", "not-a-date")
    assert r.exit_code == 1 and "HTTP 400" in r.output


def test_event_log_list_fits_120_columns_with_long_ids(h: Harness) -> None:
    source_id = "3f2b8c1e-9d4a-4f6b-8e2c-7a1d5b9c0e44"
    routing_key = f"generic:platform-team:{source_id}"
    long_ids = [f"{routing_key}:deploy-2026-03-01T00:00:0{i}Z-{'a' * 30}" for i in range(3)]

    async def seed() -> None:
        for i, delivery_id in enumerate(long_ids):
            await h.env.inbox.accept(
                Delivery(
                    org_id="platform-team",
                    delivery_id=delivery_id,
                    routing_key=routing_key,
                    event="pull_request_review_comment",
                    action="created",
                    source="relay",
                    provider="generic",
                    body=b"{}",
                    received_at=h.env.clock.now() + timedelta(seconds=i),
                )
            )
        await h.env.inbox.accept(
            Delivery(
                org_id="acme",
                delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
                routing_key="github:123456",
                event="push",
                action=None,
                source="direct",
                provider="github",
                body=b"{}",
                received_at=h.env.clock.now() + timedelta(seconds=9),
            )
        )

    h.call(seed)
    r = h.run("event-log", "list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert max(len(line) for line in lines) <= 120, "\n" + r.output
    assert lines[2].split()[2:4] == ["72d3162e-cc78-11e3-81ab-4c9367dc0958", "github:123456"]  # a GUID stays whole
    shown = [line.split()[2] for line in lines[3:6]]
    assert all(
        "…" in cell and long_ids[2 - i].startswith(cell.split("…")[0]) and long_ids[2 - i].endswith(cell.split("…")[1])
        for i, cell in enumerate(shown)
    ), shown
    wide = h.run("event-log", "list", "--wide").output
    assert all(d in wide for d in long_ids)
    doc = json.loads(h.run("event-log", "list", "--json").output)
    assert sorted(d["deliveryId"] for d in doc["deliveries"] if d["orgId"] == "platform-team") == sorted(long_ids)


def test_event_log_show_explains_why(h: Harness) -> None:
    _seed(h)
    r = h.run("event-log", "show", "d-0", "--org", "acme")
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith("Delivery: d-0\n  Org:           acme\n  Routing key:   github:123456\n")
    assert "  Repo:          o/r\n" in out and "  Status:        processed\n" in out
    assert "  Payload:       stored -- 46B\n" in out
    assert "Workflows (1 of 2 matched):" in out
    assert "  ci: matched (trigger #0)" in out
    assert "  deploy: not matched — No matching trigger" in out
    assert '    trigger #0 (push): rejected by branch: pattern "release/*", value "main" — branch not matched' in out
    assert "    trigger #1 (tag): rejected: not a tag push" in out
    assert "Payload:\n" not in out
    r = h.run("event-log", "show", "d-0", "--org", "acme", "--payload")
    assert '"token": "not-a-secret"' in r.output
    r = h.run("event-log", "show", "d-1", "--org", "acme")
    assert "No decision trace recorded (status received)." in r.output
    r = h.run("event-log", "show", "zzz", "--org", "acme")
    assert r.exit_code == 1 and r.output.strip() == "Error: HTTP 404: Delivery not found"
    r = h.run("event-log", "show", "d-0")  # the guide's form: no --org
    assert r.exit_code == 0 and r.output.startswith("Delivery: d-0\n  Org:           acme\n")


def test_event_log_replay(h: Harness) -> None:
    _seed(h)
    r = h.run("event-log", "replay", "d-0", "--org", "acme")
    assert r.output.strip() == "Delivery d-0 queued for processing again."
    assert h.env.woken == [1]


# ------------------------------------------------------------------------------------------ tokens, key, db
def test_token_commands(h: Harness) -> None:
    r = h.run("token", "create", "ci-bot", "--role", "auditor")
    lines = r.output.splitlines()
    assert lines[0].startswith("Token created: ") and lines[2] == "Save this token -- it will not be shown again."
    new_token = lines[0].removeprefix("Token created: ")
    token_id = lines[1].removeprefix("Token ID: ")
    assert h.run("event-log", "list", token=new_token).exit_code == 0
    r = h.run("token", "list")
    assert "ci-bot" in r.output and new_token not in r.output and OWNER not in r.output
    assert h.run("token", "revoke", token_id).output.strip() == f"Token {token_id} revoked."
    assert h.run("event-log", "list", token=new_token).exit_code == 1


def test_agent_token_commands(h: Harness) -> None:
    r = h.run("agent-token", "create", "--labels", "linux, x64", "--mandatory-label", "gpu")
    lines = r.output.splitlines()
    token = lines[0].removeprefix("Agent token created: ")
    assert token.startswith("kat_") and len(token) == 68
    token_id = lines[1].removeprefix("Token ID: ")
    r = h.run("agent-token", "list")
    assert token[:12] + "…" in r.output and token not in r.output and "linux,x64" in r.output
    r = h.run("agent-token", "revoke", token_id)
    assert r.output.strip() == f"Agent token {token_id} revoked; 0 connection(s) closed."
    assert h.run("agent-token", "list").output.strip() == "No agent tokens."


def test_rotate_key_and_db(h: Harness) -> None:
    assert h.run("rotate-key").output.strip() == "Error: HTTP 503: Key rotation is not available on this server"

    async def rotate() -> int:
        return 3

    async def migrate() -> list[str]:
        return []

    async def status() -> list[Any]:
        return [
            {"name": "0001_initial.sql", "status": "applied", "appliedAt": "2026-01-01T00:00:00.000Z"},
            {"name": "0002_next.sql", "status": "pending", "appliedAt": None},
        ]

    h.env.ctx.rotate_key, h.env.ctx.migrate, h.env.ctx.migration_status = rotate, migrate, status
    assert h.run("rotate-key").output.strip() == "Re-encrypted 3 secrets, 0 config versions."
    assert h.run("db", "migrate").output.strip() == "Database schema is up to date."
    r = h.run("db", "status")
    assert r.output.splitlines()[2].split() == ["0001_initial.sql", "applied", "2026-01-01T00:00:00.000Z"]
    assert r.output.splitlines()[3].split() == ["0002_next.sql", "pending", "-"]
    assert json.loads(h.run("db", "migrate", "--status", "--json").output)["migrations"][1]["status"] == "pending"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 1024 * 1024, 5 * 1024 * 1024 + 1)] == [
        "0B",
        "1023B",
        "1.0KB",
        "1.5KB",
        "1.00MB",
        "5.00MB",
    ]


def test_runs_group_is_attached() -> None:
    from kici_runtime.admin_cli import runs

    assert isinstance(runs.runs, click.Group) and cli.commands["runs"] is runs.runs


# ------------------------------------------------------------------------------------------ docs
def _gen_module() -> Any:
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_admin_docs", root / "tools" / "gen_admin_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_admin_docs_are_current() -> None:
    gen = _gen_module()
    assert gen.TARGET.read_text(encoding="utf-8") == gen.render_markdown(), "run: python tools/gen_admin_docs.py"


def test_admin_docs_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _gen_module()
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "TARGET", tmp_path / "kici-admin.md")
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    text = gen.TARGET.read_text(encoding="utf-8")
    assert "### `kici-admin event-log show`" in text and "`--private-key TEXT`" in text
