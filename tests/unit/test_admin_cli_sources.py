"""kici-admin source commands (GitHub, generic, local) against the real admin app over the fakes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from kici_core import errors
from tests.support.admin_env import PEM, Harness, open_harness


@pytest.fixture
def h() -> Iterator[Harness]:
    with open_harness() as harness:
        yield harness


GH_SECRET = "whsec-super-secret-value-9876"


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
