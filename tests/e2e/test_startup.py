"""How ``kici-standalone`` and ``kici-server`` start, or refuse to: the master key is required in every mode
(``KICI_DEV=true`` generates an ephemeral one and says so), fatal start-up errors are one line naming the fix
and no traceback, and a short database password is masked where it is a value, not in every word.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest

from kici_runtime.config import settings as config
from tests.e2e.conftest import (
    ADMIN_TOKEN,
    Independent,
    github_world,
    install,
    register_sources,
    shutdown,
    standalone_env,
)
from tests.support.github_server import GitHubServer
from tests.support.orchestrator import BIN, OrchestratorProcess, clean_env
from tests.support.pg import PgServer

pytestmark = pytest.mark.anyio

BOUND = 60.0


@pytest.fixture
def gh() -> Iterator[GitHubServer]:
    server = github_world()
    try:
        yield server
    finally:
        server.close()


def _refusal(command: str, env: dict[str, str]) -> tuple[int, list[str], list[str]]:
    """Run an entry point that must refuse to start: exit code, stdout lines, stderr lines."""
    result = subprocess.run(
        [str(BIN / command)],
        env={"KICI_PORT": "0", "KICI_HOST": "127.0.0.1", **env},
        capture_output=True,
        timeout=BOUND,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stdout.decode().splitlines(), result.stderr.decode().splitlines()


def _assert_one_line_fatal(out: list[str], err: list[str], command: str, message: str) -> None:
    assert err == [f"{command}: {message}"], err
    fatal = [json.loads(line) for line in out if "Fatal startup error" in line]
    assert len(fatal) == 1 and fatal[0]["error"] == message and "stack" not in fatal[0], out
    assert not any("Traceback" in line for line in out + err)


@pytest.mark.parametrize(
    "command, mode", [("kici-standalone", "independent"), ("kici-server", "platform"), ("kici-server", "hybrid")]
)
async def test_every_mode_refuses_to_start_without_a_master_key(
    db_url: str, tmp_path: Path, command: str, mode: str
) -> None:
    env = clean_env(
        KICI_MODE=mode,
        KICI_DATABASE_URL=db_url,
        KICI_DATA_DIR=str(tmp_path),
        KICI_PLATFORM_URL="ws://127.0.0.1:9/ws",
        KICI_PLATFORM_TOKEN="platform-token-value",
    )
    code, out, err = _refusal(command, env)
    assert code == 1
    _assert_one_line_fatal(out, err, command, config.MISSING_KEY_MESSAGE)
    assert 'python3 -c "import secrets; print(secrets.token_hex(32))"' in err[0]


async def test_missing_and_unreachable_database_are_one_line_naming_the_fix(tmp_path: Path) -> None:
    base = clean_env(KICI_MODE="independent", KICI_SECRET_KEY="ab" * 32, KICI_DATA_DIR=str(tmp_path))
    code, out, err = _refusal("kici-standalone", base)
    assert code == 1
    _assert_one_line_fatal(out, err, "kici-standalone", config.MISSING_DATABASE_MESSAGE)
    assert "coordinator" not in err[0]

    code, out, err = _refusal(
        "kici-standalone", {**base, "KICI_DATABASE_URL": "postgresql://kici:kici@127.0.0.1:9/kici"}
    )
    assert code == 69, (out, err)
    assert len(err) == 1 and err[0].startswith("kici-standalone: database unavailable: ")
    assert err[0].endswith("; check KICI_DATABASE_URL and that the PostgreSQL server is running and reachable")
    assert ":kici@" not in err[0] and not any("Traceback" in line for line in out + err)


async def test_a_busy_port_is_one_line_naming_the_fix(db_url: str, gh: GitHubServer, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = _refusal("kici-standalone", {**standalone_env(db_url, gh, tmp_path), "KICI_PORT": str(port)})
    assert code == 1, (out, err)
    message = (
        f"the HTTP listener could not start on 127.0.0.1:{port} (the log line above says why); if the "
        "address is in use, stop the process listening there or choose another KICI_PORT"
    )
    _assert_one_line_fatal(out, err, "kici-standalone", message)
    assert any("address already in use" in line for line in out)


async def test_dev_mode_generates_an_ephemeral_key_shared_with_the_processing_child(
    db_url: str, gh: GitHubServer, tmp_path: Path
) -> None:
    """Without ``KICI_SECRET_KEY``, ``KICI_DEV=true`` boots with a warning; sources registered under that key are
    usable by the processing child, which decrypts the App's private key to fetch the lock file."""
    env = {k: v for k, v in standalone_env(db_url, gh, tmp_path).items() if k != "KICI_SECRET_KEY"}
    proc = OrchestratorProcess("kici-standalone", {**env, "KICI_DEV": "true", "KICI_PROCESSING_WORKERS": "1"})
    world = Independent(proc=proc.start(), db_url=db_url, gh=gh, data_dir=tmp_path)
    try:
        warnings = [json.loads(line) for line in proc.lines if config.EPHEMERAL_KEY_WARNING in line]
        assert len(warnings) == 1 and warnings[0]["level"] == "warn"
        await anyio.to_thread.run_sync(register_sources, world)
        install(gh, "acme/app")
        delivery, resp = await world.push("acme/app")
        assert resp.status_code == 202, resp.text
        row = await world.wait_status(delivery, "processed", "failed")
        assert (row["status"], row["matched_count"]) == ("processed", 1), row
        assert proc.log_count("Processing worker started") >= 1
    finally:
        shutdown(world)


async def test_a_short_database_password_is_masked_as_a_value_only(
    pg_server: PgServer, db_url: str, gh: GitHubServer, tmp_path: Path
) -> None:
    """The database password ``kici`` is hidden in the URL; ``kici`` in an org, a source name or a routing key
    stays readable."""
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'kici'").fetchone()
        if exists is None:
            conn.execute("CREATE ROLE kici LOGIN SUPERUSER PASSWORD 'kici'")
    parts = urlsplit(db_url)
    url = urlunsplit(parts._replace(netloc=f"kici:kici@{parts.hostname}:{parts.port}"))
    proc = OrchestratorProcess("kici-standalone", standalone_env(url, gh, tmp_path))
    world = Independent(proc=proc.start(), db_url=db_url, gh=gh, data_dir=tmp_path)
    try:
        out = await world.admin(
            "source",
            "add",
            "generic",
            "--org",
            "kici",
            "--name",
            "kici-hooks",
            "--secret",
            "a-longer-generic-secret",
            "--json",
        )
        routing_key = json.loads(out.stdout)["source"]["routingKey"]
        assert routing_key.startswith("generic:kici:")
        loaded = [json.loads(line) for line in proc.lines if '"Configuration loaded"' in line]
        assert loaded[0]["settings"]["KICI_DATABASE_URL"].startswith(f"postgresql://kici:***@{parts.hostname}:")
        created = [json.loads(line) for line in proc.lines if '"Generic source created"' in line]
        assert created and created[0]["routingKey"] == routing_key and created[0]["sourceName"] == "kici-hooks"
        assert not any(":kici@" in line for line in proc.lines)
        assert ADMIN_TOKEN not in "\n".join(proc.lines) and "a-longer-generic-secret" not in "\n".join(proc.lines)
    finally:
        shutdown(world)
