"""The embedded PostgreSQL 18 server: start, data survives a stop/start cycle, same URL after restart; one
owner at a time; and, when the server runs as its own account (tests run as root), files and programs that
account cannot reach are kept where it can, without opening the user's directories."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from kici_adapters.postgres import embedded
from kici_adapters.postgres.embedded import EmbeddedPostgres
from kici_core.errors import Conflict
from tests.support.pg import start_embedded


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    server, root = start_embedded()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_server_is_postgres_18_and_accepts_connections(private_server: EmbeddedPostgres) -> None:
    with psycopg.connect(private_server.url()) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    assert int(row[0]) // 10000 == 18
    assert private_server.is_running()


def test_stop_and_start_keep_data_and_url(private_server: EmbeddedPostgres) -> None:
    url = private_server.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    private_server.stop()
    assert not private_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
    assert private_server.start() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [(42,)]


def test_start_is_idempotent_and_stop_twice_is_harmless(private_server: EmbeddedPostgres) -> None:
    assert private_server.start() == private_server.url()
    private_server.stop()
    private_server.stop()
    assert not private_server.is_running()


def test_connections_need_the_generated_password(private_server: EmbeddedPostgres) -> None:
    """Another local user cannot open a superuser session: the server asks for a password that only the data
    directory's owner can read."""
    password_file = private_server.password_file
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_server.data_dir.stat().st_mode) == 0o700
    password = password_file.read_text().strip()
    assert len(password) >= 32 and f":{password}@" in private_server.url()
    no_password = f"postgresql://postgres@127.0.0.1:{private_server.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(no_password, connect_timeout=5).close()
    wrong = f"postgresql://postgres:{'0' * 48}@127.0.0.1:{private_server.port}/postgres"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5).close()
    hba = (private_server.pgdata / "pg_hba.conf").read_text()
    assert not any(
        line.split()[-1] == "trust" for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )


def test_a_trust_cluster_from_an_older_version_gets_a_password(private_server: EmbeddedPostgres) -> None:
    """A data directory initialised with ``trust`` (and no password file) is switched to password
    authentication at its next start, keeping its data."""
    with psycopg.connect(private_server.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    private_server.stop()
    hba = private_server.pgdata / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    private_server.password_file.unlink()
    trusted = f"postgresql://postgres@127.0.0.1:{private_server.port}/postgres"
    url = private_server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [(7,)]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(trusted, connect_timeout=5).close()


def test_one_owner_at_a_time_and_a_killed_owner_frees_the_database(private_server: EmbeddedPostgres) -> None:
    assert embedded.owner_pid(private_server.data_dir) == os.getpid()
    second = EmbeddedPostgres(private_server.data_dir)
    with pytest.raises(Conflict, match=rf"in use by another running process \(pid {os.getpid()}\)"):
        second.start()
    second.stop()  # not the owner: must not stop the first one's server
    with psycopg.connect(private_server.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    private_server.stop()
    assert embedded.owner_pid(private_server.data_dir) is None
    assert second.start() == private_server.url()
    second.stop()

    # An owner that is killed frees the database at once; its server, left running, is adopted as it is.
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib\n"
            "from kici_adapters.postgres.embedded import EmbeddedPostgres\n"
            "print(EmbeddedPostgres(pathlib.Path(sys.argv[1]), durable=False).start(), flush=True)\n"
            "sys.stdin.read()\n",
            str(private_server.data_dir),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        url = owner.stdout.readline().strip()
        assert url == private_server.url(), "the owner process did not start the server"
        assert embedded.owner_pid(private_server.data_dir) == owner.pid
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close() if owner.stdout else None
        owner.stdin.close() if owner.stdin else None
    assert embedded.owner_pid(private_server.data_dir) is None, "a dead owner still holds the lock"
    assert private_server.is_running(), "the killed owner's server is left running"
    assert private_server.start() == url  # adopted as it is
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _private_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kici-private-"))  # mode 0700: nobody else may enter
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    return path


def test_a_data_directory_the_server_account_cannot_enter_is_kept_private_and_found_again() -> None:
    private = _private_dir()
    data_dir = private / "checkout" / ".kici-dev" / "data" / "postgres"
    servers: list[EmbeddedPostgres] = []

    def server(path: Path) -> EmbeddedPostgres:
        servers.append(EmbeddedPostgres(path, durable=False))
        return servers[-1]

    try:
        first = server(data_dir)
        url = first.start()
        cluster = first.cluster_dir
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, "the user's own directory was changed"
        if os.geteuid() != 0:  # the server runs as this user, which can reach its own directories
            assert cluster == first.data_dir
            return
        assert cluster.parent == Path(tempfile.gettempdir()).resolve()
        st = cluster.stat()
        assert (stat.S_IMODE(st.st_mode), pwd.getpwuid(st.st_uid).pw_name) == (0o700, embedded.SERVICE_ACCOUNT)
        assert (data_dir / embedded.LOCATION_FILE).read_text().strip() == str(cluster)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        first.stop()

        again = server(data_dir)  # the next run of the same checkout
        assert again.cluster_dir == cluster
        with psycopg.connect(again.start()) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(7,)]
        again.stop()

        shutil.rmtree(private / "checkout")  # rm -rf .kici-dev, then make dev again
        with psycopg.connect(server(data_dir).start()) as conn:
            assert conn.execute("SELECT to_regclass('kept')").fetchone() == (None,), "stale cluster reused"
        servers[-1].stop()

        shutil.rmtree(private / "checkout")  # and this time nothing starts on that path again
        assert cluster.exists()
        server(private / "other" / "postgres").start()  # another checkout
        assert not cluster.exists(), "the cluster of a deleted data directory was kept"
    finally:
        for each in servers:
            each.stop()
            if each.cluster_dir != each.data_dir:
                shutil.rmtree(each.cluster_dir, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def test_programs_in_a_directory_the_server_account_cannot_enter_are_run_from_a_copy() -> None:
    """A virtualenv inside a private checkout (``/root/kici/.venv``, a ``mktemp -d`` clone)."""
    private = _private_dir()
    package = embedded.bin_dir().parent.parent
    shutil.copytree(package, private / "site" / package.name, symlinks=True)
    libs = package.with_name(f"{package.name}.libs")
    if libs.is_dir():
        shutil.copytree(libs, private / "site" / libs.name, symlinks=True)
    data_dir = Path(tempfile.mkdtemp(prefix="kici-pg-"))
    script = (
        "import sys, pathlib\n"
        "from kici_adapters.postgres import embedded\n"
        "server = embedded.EmbeddedPostgres(pathlib.Path(sys.argv[1]), durable=False)\n"
        "server.start()\n"
        "print(embedded.bin_dir(), server._bin('postgres'), flush=True)\n"
        "server.stop()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(private / "site"), str(Path.cwd())])}
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, str(data_dir)], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        installed, ran = result.stdout.split()
        assert installed.startswith(str(private)), "the test did not use the private installation"
        if os.geteuid() == 0:
            copy = Path(ran).parents[3]
            assert copy.parent == Path(tempfile.gettempdir()).resolve() and copy.name.startswith("kici-pgbin-")
            shutil.rmtree(private)  # the virtualenv is deleted: the next start removes the copy
            EmbeddedPostgres(data_dir, durable=False).stop_if_abandoned()
            assert not copy.exists(), "the copy of a deleted installation was kept"
        else:
            assert ran.startswith(str(private))
    finally:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
