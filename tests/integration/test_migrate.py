"""Migrations: applied once, recorded with checksums, edited files refused, safe under concurrency."""

from __future__ import annotations

import multiprocessing
import re

import psycopg
import pytest

from kici_adapters.postgres import migrate
from kici_core.errors import ConfigError, KiciError


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_shipped_migrations_are_numbered_and_ordered() -> None:
    names = [m.name for m in migrate.known_migrations()]
    assert names, "no migrations shipped"
    assert names[0].startswith("0001_")
    assert names == sorted(names)


def test_apply_creates_schema_and_second_run_is_noop(empty_db_url: str) -> None:
    names = [m.name for m in migrate.known_migrations()]
    assert migrate.apply_migrations(empty_db_url) == names
    assert migrate.apply_migrations(empty_db_url) == []
    expected = {
        "schema_migrations",
        "sources",
        "generic_webhook_sources",
        "scoped_secrets",
        "admin_tokens",
        "agent_tokens",
        "event_log",
        "delivery_inbox",
        "execution_runs",
        "execution_jobs",
        "execution_job_needs",
        "execution_steps",
        "dispatch_queue",
        "log_chunks",
        "agents",
        "platform_outbox",
        "cluster_meta",
        "secret_audit_log",
    }
    assert expected <= _tables(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        rows = conn.execute("SELECT name, checksum FROM schema_migrations ORDER BY name").fetchall()
        cluster = conn.execute("SELECT value FROM cluster_meta WHERE key = 'cluster_id'").fetchone()
    assert rows == [(m.name, m.checksum) for m in migrate.known_migrations()]
    assert cluster is not None and len(cluster[0]) == 36


def test_edited_applied_migration_is_refused_naming_the_file(empty_db_url: str) -> None:
    first = migrate.Migration(name="0001_first.sql", sql=b"CREATE TABLE a (x int);")
    assert migrate.apply_migrations(empty_db_url, [first]) == ["0001_first.sql"]
    edited = migrate.Migration(name="0001_first.sql", sql=b"CREATE TABLE a (x bigint);")
    with pytest.raises(ConfigError, match=re.escape("0001_first.sql was edited")):
        migrate.apply_migrations(empty_db_url, [edited])


def test_unknown_applied_migration_is_refused(empty_db_url: str) -> None:
    one = migrate.Migration(name="0001_a.sql", sql=b"SELECT 1;")
    two = migrate.Migration(name="0002_b.sql", sql=b"SELECT 2;")
    migrate.apply_migrations(empty_db_url, [one, two])
    with pytest.raises(ConfigError, match=re.escape("0002_b.sql")):
        migrate.apply_migrations(empty_db_url, [one])


def test_failed_migration_leaves_nothing_behind(empty_db_url: str) -> None:
    good = migrate.Migration(name="0001_good.sql", sql=b"CREATE TABLE good (x int);")
    bad = migrate.Migration(name="0002_bad.sql", sql=b"CREATE TABLE half (x int); SELECT nope FROM missing;")
    with pytest.raises(KiciError, match=re.escape("0002_bad.sql")):
        migrate.apply_migrations(empty_db_url, [good, bad])
    assert "good" in _tables(empty_db_url)
    assert "half" not in _tables(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()]
    assert names == ["0001_good.sql"]


def test_plan_refuses_out_of_order_history() -> None:
    one = migrate.Migration(name="0001_a.sql", sql=b"SELECT 1;")
    two = migrate.Migration(name="0002_b.sql", sql=b"SELECT 2;")
    with pytest.raises(ConfigError, match=re.escape("0001_a.sql is not applied")):
        migrate.plan([one, two], {"0002_b.sql": two.checksum})


def _migrate_in_child(url: str, queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put(migrate.apply_migrations(url))


def test_three_processes_apply_each_migration_exactly_once(empty_db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_child, args=(empty_db_url, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    applied = sorted(name for result in results for name in result)
    assert applied == [m.name for m in migrate.known_migrations()]
    with psycopg.connect(empty_db_url) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count is not None and count[0] == len(applied)


def test_schema_enforces_the_race_critical_uniques(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        claim = (
            "INSERT INTO event_log (org_id, delivery_id, routing_key, event, source, provider,"
            " payload_size_bytes, payload_hash) VALUES ('o', 'd1', 'github:1', 'push', 'direct', 'github', 2, 'h')"
            " ON CONFLICT (org_id, delivery_id) DO NOTHING RETURNING id"
        )
        first = conn.execute(claim).fetchone()
        assert first is not None
        assert conn.execute(claim).fetchone() is None  # the duplicate claims nothing
        run = (
            "INSERT INTO execution_runs (run_id, org_id, delivery_id, workflow_name, provider, routing_key)"
            " VALUES (gen_random_uuid(), 'o', 'd1', 'ci', 'github', 'github:1')"
            " ON CONFLICT DO NOTHING RETURNING run_id"
        )
        run_row = conn.execute(run).fetchone()
        assert run_row is not None
        assert conn.execute(run).fetchone() is None  # at most one run per (delivery, workflow)
        job_id = conn.execute(
            "INSERT INTO execution_jobs (job_id, run_id, job_name, base_name, required_labels)"
            " VALUES (gen_random_uuid(), %s, 'build', 'build', '{linux,x64}') RETURNING job_id",
            (run_row[0],),
        ).fetchone()
        assert job_id is not None
        chunk = (
            "INSERT INTO log_chunks (run_id, job_id, step_index, seq, content) VALUES (%s, %s, NULL, 1, 'x')"
            " ON CONFLICT DO NOTHING RETURNING id"
        )
        assert conn.execute(chunk, (run_row[0], job_id[0])).fetchone() is not None
        assert conn.execute(chunk, (run_row[0], job_id[0])).fetchone() is None
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE execution_jobs SET status = 'done' WHERE job_id = %s", (job_id[0],))


@pytest.mark.anyio
async def test_migration_states_list_every_shipped_migration_pending_then_applied(empty_db_url: str) -> None:
    names = [m.name for m in migrate.known_migrations()]
    before = await migrate.migration_states(empty_db_url)
    assert [(s.name, s.applied_at) for s in before] == [(name, None) for name in names]
    migrate.apply_migrations(empty_db_url)
    after = await migrate.migration_states(empty_db_url)
    assert [s.name for s in after] == names
    assert all(s.applied_at is not None and s.applied_at.tzinfo is not None for s in after)
