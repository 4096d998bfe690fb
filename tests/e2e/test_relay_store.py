"""RelayStore: source lookups served from memory stay exact across this store's writes and another
process's writes to the same file; the file runs in WAL mode."""

from __future__ import annotations

from pathlib import Path

from kici_adapters.relay.store import RelayStore


def test_source_lookups_follow_writes_from_this_and_other_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sqlite3")
    store = RelayStore(path)
    other = RelayStore(path)  # what `kici-relay source add` does while the relay runs
    try:
        assert store.get_source("github:1") is None
        added = other.add_github_source(org="acme", app_id="1", webhook_secret="first")
        assert store.get_source("github:1") == added
        assert store.get_source("github:1") == added  # answered from memory

        other.remove_source("github:1")
        again = other.add_github_source(org="acme", app_id="1", webhook_secret="rotated")
        found = store.get_source("github:1")
        assert found == again and found is not None and found.secret == "rotated"

        store.remove_source("github:1")
        assert store.get_source("github:1") is None
        assert other.get_source("github:1") is None
        mine = store.add_github_source(org="acme", app_id="1", webhook_secret="mine")
        assert store.get_source("github:1") == mine
        assert other.get_source("github:1") == mine
    finally:
        store.close()
        other.close()


def test_recorded_messages_survive_reopening_in_wal_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sqlite3")
    store = RelayStore(path)
    recorded = store.record_message(org="acme", connection_id="c1", type="webhook.ack", body={"result": "accepted"})
    store.close()
    reopened = RelayStore(path)
    try:
        (message,) = reopened.list_messages()
        assert message.seq == recorded.seq and message.body == {"result": "accepted"}
        assert reopened._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        reopened.close()


def test_recorded_messages_are_written_behind_yet_every_read_sees_them(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sqlite3")
    store = RelayStore(path)
    other = RelayStore(path)  # another connection to the file, as a second process would have
    try:
        first = [
            store.record_message(org="acme", connection_id="c1", type="webhook.ack", body={"n": i}) for i in range(3)
        ]
        assert [m.seq for m in first] == sorted({m.seq for m in first})  # strictly increasing
        assert [m.body for m in store.list_messages()] == [{"n": 0}, {"n": 1}, {"n": 2}]  # a read writes them
        store.record_message(org="acme", connection_id="c1", type="execution.event", body={"n": 3})
        store.flush()
        assert [m.body for m in other.list_messages(since=first[-1].seq)] == [{"n": 3}]
    finally:
        store.close()
        other.close()
    reopened = RelayStore(path)
    try:
        later = reopened.record_message(org="acme", connection_id="c1", type="webhook.ack", body={"n": 4})
        assert later.seq > first[-1].seq + 1  # numbering goes on across restarts
        assert [m.body["n"] for m in reopened.list_messages()] == [0, 1, 2, 3, 4]  # type: ignore[index,call-overload]
    finally:
        reopened.close()
