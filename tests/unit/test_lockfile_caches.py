"""Parsed lock files are shared across deliveries by content hash; corrupt files are never cached."""

from __future__ import annotations

import json

import pytest

from kici_core import errors, lockfile_cache
from tests.unit.test_services import LOCK, SHA, World, push_payload

pytestmark = pytest.mark.anyio


def test_same_bytes_parse_once_and_share_the_result() -> None:
    cache = lockfile_cache.ParsedLockfiles(max_entries=4)
    data = json.dumps(LOCK).encode()
    first = cache.parse(data)
    again = cache.parse(bytes(bytearray(data)))  # equal content, another object
    assert again is first and cache.parses == 1
    other = dict(LOCK, contentHash="y")
    assert cache.parse(json.dumps(other).encode()).content_hash == "y" and cache.parses == 2


def test_corrupt_file_raises_every_time() -> None:
    cache = lockfile_cache.ParsedLockfiles()
    bad = b'{"schemaVersion": 29, "workflows": [{"name": 1}]}'
    for _ in range(2):
        with pytest.raises(errors.LockfileError):
            cache.parse(bad)
    assert cache.parses == 2


def test_least_recently_used_entry_is_evicted() -> None:
    cache = lockfile_cache.ParsedLockfiles(max_entries=2)
    files = [json.dumps(dict(LOCK, contentHash=str(i))).encode() for i in range(3)]
    cache.parse(files[0])
    cache.parse(files[1])
    cache.parse(files[0])  # 0 is now the most recent
    cache.parse(files[2])  # evicts 1
    assert cache.parses == 3
    cache.parse(files[0])
    assert cache.parses == 3
    cache.parse(files[1])
    assert cache.parses == 4


async def test_pipeline_parses_a_lock_file_once_for_many_deliveries() -> None:
    w = World()
    await w.setup()
    for i in range(3):
        await w.deliver(push_payload(), delivery_id=f"d{i}")
        run_ids = await w.run_once()
        assert run_ids is not None and len(run_ids) == 1
    assert w.pipeline.parsed.parses == 1
    assert len(w.inbox.runs) == 3
    # a changed file at the same ref is parsed afresh
    w.lockfiles.files[("acme/app", SHA)] = json.dumps(dict(LOCK, contentHash="z")).encode()
    await w.deliver(push_payload(), delivery_id="d9")
    assert await w.run_once()
    assert w.pipeline.parsed.parses == 2
