"""Blob stores: filesystem (atomic, durable writes) and S3 against moto's real S3-protocol server."""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import boto3
import pytest
from moto.server import ThreadedMotoServer

from kici_adapters import storage
from kici_core.errors import InvalidInput, NotFound, StorageUnavailable

pytestmark = pytest.mark.anyio

CREDS = {"access_key_id": "testing", "secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _make_bucket(endpoint: str, name: str) -> None:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=name)


@pytest.fixture
def fs_store(tmp_path: Path) -> storage.FilesystemBlobStore:
    return storage.FilesystemBlobStore(tmp_path / "logs")


@pytest.fixture
def s3_store(s3_endpoint: str, request: pytest.FixtureRequest) -> storage.S3BlobStore:
    bucket = f"b-{abs(hash(request.node.name)) % 10**8}"
    _make_bucket(s3_endpoint, bucket)
    return storage.S3BlobStore.for_logs(
        bucket=bucket, region="us-east-1", endpoint=s3_endpoint, force_path_style=True, **CREDS
    )


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_store")


async def test_put_get_exists_delete(store: Any) -> None:
    key = storage.event_log_payload_key("acme", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    body = gzip.compress(b'{"zen":"ok"}')
    assert not await store.exists(key)
    with pytest.raises(NotFound):
        await store.get(key)
    await store.put(key, body)
    assert await store.exists(key)
    assert await store.get(key) == body
    await store.put(key, b"replaced")
    assert await store.get(key) == b"replaced"
    await store.delete(key)
    await store.delete(key)  # idempotent
    assert not await store.exists(key)


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
async def test_unsafe_keys_are_refused(store: Any, bad: str) -> None:
    with pytest.raises(InvalidInput):
        await store.put(bad, b"x")


async def test_filesystem_layout_and_no_temp_leftovers(fs_store: storage.FilesystemBlobStore) -> None:
    key = storage.step_log_key("run-1", "build", 0)
    await fs_store.put(key, b"line\n")
    target = fs_store.root / "executions" / "run-1" / "job-build" / "step-0.log"
    assert target.read_bytes() == b"line\n"
    assert [p.name for p in target.parent.iterdir()] == ["step-0.log"]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors ``os.fsync`` is called on from now on (the calls still happen)."""
    calls: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return calls


async def test_filesystem_copies_skip_the_fsyncs_durable_writes_make(
    fs_store: storage.FilesystemBlobStore, synced: list[int]
) -> None:
    await fs_store.put(storage.run_payload_key("run-2"), b'{"copy":true}', durable=False)
    assert synced == []
    target = fs_store.root / "executions" / "run-2" / "webhook-payload.json"
    assert target.read_bytes() == b'{"copy":true}'
    assert [p.name for p in target.parent.iterdir()] == ["webhook-payload.json"]  # renamed into place whole
    await fs_store.put(storage.run_payload_key("run-3"), b"{}")
    assert len(synced) >= 3  # the file, its new directory and that directory's parent


async def test_filesystem_unwritable_root_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageUnavailable):
        await storage.FilesystemBlobStore(blocker).put("a/b", b"x")


async def test_s3_objects_live_under_the_log_prefix(s3_store: storage.S3BlobStore, s3_endpoint: str) -> None:
    key = storage.event_log_payload_key("acme", "d-1")
    await s3_store.put(key, b"gz")
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    head = client.head_object(Bucket=s3_store.bucket, Key="kici-logs/event-log/acme/d-1.json.gz")
    assert head["ContentType"] == "application/gzip"


async def test_s3_missing_bucket_is_storage_unavailable(s3_endpoint: str) -> None:
    store = storage.S3BlobStore(
        "no-such-bucket", region="us-east-1", endpoint=s3_endpoint, force_path_style=True, **CREDS
    )
    with pytest.raises(StorageUnavailable):
        await store.put("a", b"x")


async def test_s3_unreachable_endpoint_is_storage_unavailable() -> None:
    store = storage.S3BlobStore(
        "b", region="us-east-1", endpoint=f"http://127.0.0.1:{_free_port()}", force_path_style=True, **CREDS
    )
    with pytest.raises(StorageUnavailable):
        await store.get("a")


def test_key_segment_encoding() -> None:
    assert storage.encode_key_segment("abc-1.2:3") == "abc-1.2:3"
    assert storage.encode_key_segment("a/b_c d") == "a_2fb_5fc_20d"
    assert storage.encode_key_segment("é") == "_e9"
    assert storage.encode_key_segment("\U0001f600") == "_d83d_de00"  # UTF-16 surrogate pair
    assert storage.event_log_payload_key("org_1", "x/y") == "event-log/org_1/x_2fy.json.gz"
    assert storage.run_payload_key("r") == "executions/r/webhook-payload.json"
    assert storage.log_chunk_key("r", "j", 2, 7) == "executions/r/job-j/step-2/chunk-00000007.log"
    assert storage.log_chunk_key("r", "j", None, 7) == "executions/r/job-j/job/chunk-00000007.log"


async def test_concurrent_filesystem_puts_share_batches_and_each_lands(tmp_path: Path, synced: list[int]) -> None:
    store = storage.FilesystemBlobStore(tmp_path / "blobs", lanes=1)
    keys = [storage.event_log_payload_key("acme", f"d-{i}") for i in range(40)]
    async with anyio.create_task_group() as tg:
        for i, key in enumerate(keys):
            tg.start_soon(store.put, key, f"body-{i}".encode())
    for i, key in enumerate(keys):
        assert await store.get(key) == f"body-{i}".encode()
    assert 1 < store.batches < len(keys)  # the first caller wrote alone, the others queued behind it together
    # one fsync per file, and the shared directory (plus the ones the first write created) once per batch
    assert len(synced) < 2 * len(keys)
    assert not [p for p in (tmp_path / "blobs" / "event-log" / "acme").iterdir() if p.name.endswith(".tmp")]


async def test_a_failed_write_fails_only_its_own_put(tmp_path: Path) -> None:
    store = storage.FilesystemBlobStore(tmp_path / "blobs", lanes=1)
    (tmp_path / "blobs" / "executions").mkdir(parents=True)
    (tmp_path / "blobs" / "executions" / "blocked").write_text("a file where a directory should be")
    results: dict[str, BaseException | None] = {}

    async def put(key: str) -> None:
        try:
            await store.put(key, b"x")
            results[key] = None
        except StorageUnavailable as exc:
            results[key] = exc

    good = [storage.run_payload_key(f"ok-{i}") for i in range(5)]
    bad = "executions/blocked/webhook-payload.json"
    async with anyio.create_task_group() as tg:
        for key in [good[0], bad, *good[1:]]:
            tg.start_soon(put, key)
    assert isinstance(results[bad], StorageUnavailable)
    assert all(results[k] is None for k in good)
    assert [await store.get(k) for k in good] == [b"x"] * len(good)


async def test_a_cancelled_waiting_put_strands_nobody(tmp_path: Path) -> None:
    store = storage.FilesystemBlobStore(tmp_path / "blobs", lanes=1)
    keys = [storage.run_payload_key(f"r-{i}") for i in range(10)]
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(store.put, key, b"kept")
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(store.put, storage.run_payload_key("cancelled"), b"maybe")
            await anyio.lowlevel.checkpoint()
            doomed.cancel_scope.cancel()
    with anyio.fail_after(10):
        for key in keys:
            assert await store.get(key) == b"kept"


def test_a_batch_renames_nothing_before_every_durable_file_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "blobs"
    (root / "event-log" / "acme").mkdir(parents=True)
    writes = [
        storage._FileWrite(root / "event-log" / "acme" / f"d-{i}.json.gz", b"x" * i, durable=i % 2 == 0)
        for i in range(6)
    ]
    storage._write_batch(writes)
    assert all(w.error is None for w in writes)
    assert [(root / "event-log" / "acme" / f"d-{i}.json.gz").read_bytes() for i in range(6)] == [
        b"x" * i for i in range(6)
    ]
    renames = [i for i, e in enumerate(events) if e == "rename"]
    assert len(renames) == 6
    # three durable files synced before the first rename; then the one directory, once
    assert events[: renames[0]] == ["fsync"] * 3
    assert events[renames[-1] + 1 :] == ["fsync"]
    assert not [p for p in (root / "event-log" / "acme").iterdir() if p.name.endswith(".tmp")]


async def test_copies_of_one_body_in_a_batch_are_written_once_and_stay_independent(tmp_path: Path) -> None:
    """A delivery's runs each get a copy of its payload: one file written, the other names hard links to it.
    Replacing or deleting one copy leaves the others as they were."""
    store = storage.FilesystemBlobStore(tmp_path / "blobs", lanes=1)
    body = b'{"ref": "refs/heads/main", "after": "' + b"5" * 40 + b'"}'
    keys = [storage.run_payload_key(f"run-{i}") for i in range(5)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.put, storage.run_payload_key("first"), b"holds the lane")  # the others queue behind it
        for key in keys:
            tg.start_soon(lambda k: store.put(k, body, durable=False), key)
    paths = [tmp_path / "blobs" / k for k in keys]
    assert [await store.get(k) for k in keys] == [body] * 5
    assert len({p.stat().st_ino for p in paths}) == 1, "each copy was written separately"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["webhook-payload.json"]  # no temporary left
    await store.put(keys[0], b"replaced", durable=False)
    await store.delete(keys[1])
    assert await store.get(keys[0]) == b"replaced"
    assert [await store.get(k) for k in keys[2:]] == [body] * 3
    with pytest.raises(NotFound):
        await store.get(keys[1])


def test_copies_linked_into_new_directories_need_no_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery's run copies land in directories the batch creates (one per new run): after the first copy is
    written, each other name is linked in place, with no temporary file to rename or remove."""
    renames: list[str] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        renames.append(str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    root = tmp_path / "blobs"
    body = b'{"ref": "refs/heads/main", "after": "' + b"5" * 40 + b'"}'
    writes = [storage._FileWrite(root / storage.run_payload_key(f"run-{i}"), body, durable=False) for i in range(5)]
    storage._write_batch(writes)
    assert all(w.error is None for w in writes)
    assert [w.path.read_bytes() for w in writes] == [body] * 5
    assert len({w.path.stat().st_ino for w in writes}) == 1
    assert renames == [str(writes[0].path)]  # only the written file; the links went in place
    assert all(sorted(p.name for p in w.path.parent.iterdir()) == ["webhook-payload.json"] for w in writes)
    # an existing object is still replaced through a temporary file (readers never see a partial one)
    again = [storage._FileWrite(w.path, b"new", durable=False) for w in writes[:2]]
    storage._write_batch(again)
    assert [w.path.read_bytes() for w in writes] == [b"new", b"new", body, body, body]
    assert not [p for w in writes for p in w.path.parent.iterdir() if p.name.endswith(".tmp")]
