"""kici-admin against the real admin app over the fakes: global options, token/key/db commands, generated docs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from kici_runtime.admin_cli.cli import cli
from kici_runtime.admin_cli.client import human_bytes
from tests.support.admin_env import AUDITOR, OWNER, Harness, open_harness


@pytest.fixture
def h() -> Iterator[Harness]:
    with open_harness() as harness:
        yield harness


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
