"""Blob stores: filesystem (atomic, durable writes) and S3 against moto's real S3-protocol server."""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
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


async def test_filesystem_copies_skip_the_fsyncs_durable_writes_make(fs_store: storage.FilesystemBlobStore,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
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
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    head = client.head_object(Bucket=s3_store.bucket, Key="kici-logs/event-log/acme/d-1.json.gz")
    assert head["ContentType"] == "application/gzip"


async def test_s3_missing_bucket_is_storage_unavailable(s3_endpoint: str) -> None:
    store = storage.S3BlobStore("no-such-bucket", region="us-east-1", endpoint=s3_endpoint,
                                force_path_style=True, **CREDS)
    with pytest.raises(StorageUnavailable):
        await store.put("a", b"x")


async def test_s3_unreachable_endpoint_is_storage_unavailable() -> None:
    store = storage.S3BlobStore("b", region="us-east-1", endpoint=f"http://127.0.0.1:{_free_port()}",
                                force_path_style=True, **CREDS)
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
