"""Object storage for gzipped webhook payloads and logs: a filesystem adapter and an S3 adapter.

Both implement the ``BlobStore`` port: ``put`` is durable when it returns, ``get`` raises ``NotFound`` for
a missing key, and outages surface as ``StorageUnavailable``. Blocking I/O runs in worker threads.

The key layout lives in :mod:`kici_core.keys`; its helpers are re-exported here. The S3 log store
adds the fixed prefix ``kici-logs/``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from kici_adapters.lanes import Lanes
from kici_core.errors import ConfigError, InvalidInput, NotFound, StorageUnavailable
from kici_core.keys import (
    encode_key_segment,
    event_log_payload_key,
    log_chunk_key,
    run_payload_key,
    step_log_key,
)

LOG_PREFIX = "kici-logs/"
FILE_MODE = 0o600
"""Mode of the files the filesystem store writes (payloads carry repository data: not world-readable)."""
DIR_MODE = 0o700
"""Mode of the directories it creates."""

__all__ = [
    "LOG_PREFIX",
    "FilesystemBlobStore",
    "S3BlobStore",
    "encode_key_segment",
    "event_log_payload_key",
    "log_chunk_key",
    "run_payload_key",
    "step_log_key",
]


def _check_key(key: str) -> None:
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise InvalidInput(f"invalid object key {key!r}")


def _content_type(key: str) -> str:
    if key.endswith(".gz"):
        return "application/gzip"
    if key.endswith(".json"):
        return "application/json"
    return "text/plain; charset=utf-8"


# ------------------------------------------------------------------------------------------- filesystem
@dataclass(eq=False, slots=True)
class _FileWrite:
    path: Path
    data: bytes
    durable: bool
    wake: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False  # chosen to write the next batch
    finished: bool = False
    error: OSError | None = None


class FilesystemBlobStore:
    """Objects as files under ``root`` (``<root>/<key>``).

    Files are created ``0600`` and directories ``0700`` (:data:`FILE_MODE`, :data:`DIR_MODE`): payloads and
    logs are readable by the orchestrator's account only. A write goes to a temporary file in the target
    directory, is fsynced, renamed over the final name and the directory is fsynced (as is every directory the
    write created), so an acknowledged ``put`` survives a crash and readers never see a partial object. A
    ``durable=False`` write skips the fsyncs
    (still atomic for readers): it is for copies whose original is durable elsewhere.

    Concurrent ``put`` calls share the work like a group commit: a caller that finds fewer than ``lanes``
    batches in flight writes what is queued (up to ``max_batch`` objects) in one worker-thread call, fsyncing
    each directory once per batch rather than once per object; callers arriving meanwhile wait, and when a
    batch ends the oldest waiting caller leads the next one. Nobody returns before its own object is written.
    """

    def __init__(self, root: Path, *, lanes: int = 2, max_batch: int = 128) -> None:
        self.root = root
        self._lanes: Lanes[_FileWrite] = Lanes(lanes)
        self._max_batch = max(1, max_batch)
        self.batches = 0
        """Worker-thread batches written (for tests)."""

    def _path(self, key: str) -> Path:
        _check_key(key)  # relative, "/"-separated, no empty, "." or ".." segment: safe to join as is
        return self.root / key

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store ``data`` at ``key`` (replacing any previous object); forced to disk unless ``durable=False``."""
        me = _FileWrite(self._path(key), bytes(data), durable)
        await self._lanes.join(me, self._lead, lambda w: w.finished)
        if me.error is not None:
            raise StorageUnavailable(f"cannot write object {me.path.name}: {me.error.strerror}") from me.error

    async def _lead(self, me: _FileWrite) -> None:
        with anyio.CancelScope(shield=True):
            queue = self._lanes.queue
            batch = [me]
            queue.remove(me)
            for w in list(queue):
                if len(batch) >= self._max_batch:
                    break
                if not w.lead:
                    batch.append(w)
                    queue.remove(w)
            try:
                await anyio.to_thread.run_sync(_write_batch, batch)
                self.batches += 1
            except BaseException as exc:  # not an OSError (those are per write): fail the whole batch
                for w in batch:
                    w.error = w.error or OSError(0, f"write failed: {type(exc).__name__}")
                raise
            finally:
                for w in batch:
                    w.finished = True
                self._lanes.end(batch)

    async def get(self, key: str) -> bytes:
        """The object's bytes. Raises ``NotFound``."""
        path = self._path(key)
        try:
            return await anyio.to_thread.run_sync(path.read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"object {key} not found") from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot read object {key}: {exc.strerror}") from exc

    async def exists(self, key: str) -> bool:
        """True when an object is stored at ``key``."""
        return await anyio.to_thread.run_sync(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        path = self._path(key)
        try:
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
        except OSError as exc:
            raise StorageUnavailable(f"cannot delete object {key}: {exc.strerror}") from exc


def _write_batch(batch: list[_FileWrite]) -> None:
    """Write the objects of ``batch`` (a failed one records its error and leaves the others alone).

    In phases, so a batch costs the filesystem about one journal commit rather than one per object: every
    temporary file is written first (non-durable writes of the same bytes object, such as the payload copies of
    one delivery's runs, are hard links to the first one's file: one write instead of one per run; into a
    directory the batch created, the link is made under the final name at once), then the durable ones are
    fsynced (the first fsync commits the journal entries of all of them; the rest find their data already on
    disk), then all are renamed into place, then each directory the durable ones touched is fsynced once. An
    object is never visible under its name before its bytes are on disk."""
    staged: list[tuple[_FileWrite, Path, list[Path]]] = []
    written: dict[int, Path] = {}  # id(data) -> a staged copy of it (the batch holds the data objects)
    for w in batch:
        tmp = w.path.with_name(f".{w.path.name}.{secrets.token_hex(6)}.tmp")
        try:
            created = _make_dirs(w.path.parent)
            same = written.get(id(w.data)) if not w.durable else None
            if same is not None and created and _link(same, w.path):
                # a directory this batch just made holds nothing to replace: the link goes in place at once
                # (the staged bytes are complete; a non-durable write needs no fsync before it is visible)
                staged.append((w, w.path, created))
                continue
            if same is None or not _link(same, tmp):
                # payloads and logs are private to the orchestrator's account: 0600 files in 0700 directories
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(w.data)
                if not w.durable:
                    written.setdefault(id(w.data), tmp)
        except OSError as exc:
            w.error = exc
            _discard(tmp)
            continue
        staged.append((w, tmp, created))
    try:
        for w, tmp, _ in staged:
            if w.durable:
                try:
                    _fsync_file(tmp)
                except OSError as exc:
                    w.error = exc
        dirs: dict[Path, list[_FileWrite]] = {}
        for w, tmp, created in staged:
            if w.error is None and tmp != w.path:
                try:
                    os.replace(tmp, w.path)
                except OSError as exc:
                    w.error = exc
                    continue
                if w.durable:
                    for directory in [w.path.parent, *(d.parent for d in created)]:
                        dirs.setdefault(directory, []).append(w)
    finally:
        for w, tmp, _ in staged:
            if tmp != w.path:
                _discard(tmp)  # gone after a successful rename; left only by a failure
    for directory, writes in dirs.items():
        try:
            _fsync_dir(directory)
        except OSError as exc:
            for w in writes:
                w.error = w.error or exc


def _link(source: Path, target: Path) -> bool:
    """Hard-link ``target`` to the staged ``source`` (the same bytes: a run's payload copies are one body); False
    when the filesystem refuses, and the bytes are written instead. A later ``put`` or ``delete`` of either key
    replaces or removes only that name."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (outermost first)."""
    try:  # the common cases in one system call: a new directory under an existing one, or one that exists
        directory.mkdir(mode=DIR_MODE)
    except FileExistsError:
        return []
    except FileNotFoundError:
        pass
    else:
        return [directory]
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for d in reversed(missing):
        d.mkdir(mode=DIR_MODE, exist_ok=True)
    return list(reversed(missing))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- S3
class S3BlobStore:
    """Objects in an S3-compatible bucket under ``prefix``, through boto3 in worker threads.

    Args mirror the ``KICI_STORAGE_*`` settings: ``bucket``, ``region`` (``KICI_STORAGE_REGION``),
    ``endpoint`` (``KICI_STORAGE_ENDPOINT``), ``force_path_style`` (``KICI_STORAGE_FORCE_PATH_STYLE``;
    None = SDK default). Credentials come from the AWS default chain unless given explicitly. Checksums
    are computed only when required, so SeaweedFS, MinIO and R2 accept the requests.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint: str | None = None,
        force_path_style: bool | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        if not bucket:
            raise ConfigError("KICI_STORAGE_BUCKET is required when KICI_STORAGE_TYPE=s3")
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("S3 storage needs the optional dependency: pip install 'kici[s3]'") from exc
        s3_options: dict[str, Any] = {}
        if force_path_style is not None:
            s3_options["addressing_style"] = "path" if force_path_style else "virtual"
        config = Config(
            region_name=region,
            s3=s3_options,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        )
        self.bucket = bucket
        self.prefix = prefix
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    @classmethod
    def for_logs(
        cls,
        *,
        bucket: str,
        log_bucket: str | None = None,
        region: str | None = None,
        endpoint: str | None = None,
        force_path_style: bool | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> S3BlobStore:
        """The log store: ``KICI_STORAGE_LOG_BUCKET`` (else the cache bucket) under ``kici-logs/``."""
        return cls(
            log_bucket or bucket,
            prefix=LOG_PREFIX,
            region=region,
            endpoint=endpoint,
            force_path_style=force_path_style,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
        )

    def _key(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    async def _call(self, key: str, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        def run() -> Any:
            return getattr(self._client, operation)(Bucket=self.bucket, **kwargs)

        try:
            return await anyio.to_thread.run_sync(run)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"object {key} not found") from None
            raise StorageUnavailable(f"object storage refused {operation} on {key}: {code or exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object storage unavailable ({operation} {key}): {exc}") from exc

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Upload ``data`` at ``key``; durable once S3 acknowledges it (``durable`` changes nothing here)."""
        await self._call(key, "put_object", Key=self._key(key), Body=data, ContentType=_content_type(key))

    async def get(self, key: str) -> bytes:
        """The object's bytes. Raises ``NotFound``."""
        response = await self._call(key, "get_object", Key=self._key(key))
        body = response["Body"]
        try:
            return bytes(await anyio.to_thread.run_sync(body.read))
        finally:
            body.close()

    async def exists(self, key: str) -> bool:
        """True when an object is stored at ``key``."""
        try:
            await self._call(key, "head_object", Key=self._key(key))
        except NotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        await self._call(key, "delete_object", Key=self._key(key))
