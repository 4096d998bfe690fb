"""Lookups by an id given as text use the uuid column's index and still match nothing on garbage.

Every named query that takes a run, job, queue-row or registration id as text compares through
``kici_uuid``/``kici_uuids`` (migration 0010). Here: what those functions return, that a plan over a real table
can use the index (it could not with ``col::text = $1``), and that a query from the adapters' files answers
garbage ids with no row rather than an error.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from kici_adapters.postgres import queries

ID = "0b9f7a52-1c1e-4d7b-9a51-3f2a6c0e8d11"


def test_canonical_text_becomes_the_uuid_and_anything_else_null(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        one = conn.execute("SELECT kici_uuid(%s)", (ID,)).fetchone()
        assert one is not None and one[0] == uuid.UUID(ID)
        for garbage in ["", "x", ID.upper(), ID.replace("-", ""), "{" + ID + "}", ID + " ", "1" * 36]:
            row = conn.execute("SELECT kici_uuid(%s)", (garbage,)).fetchone()
            assert row is not None and row[0] is None, garbage
        many = conn.execute("SELECT kici_uuids(%s::text[])", ([ID, "nope", ID.upper()],)).fetchone()
        assert many is not None and many[0] == [uuid.UUID(ID)]
        empty = conn.execute("SELECT kici_uuids(%s::text[])", ([],)).fetchone()
        assert empty is not None and empty[0] == []


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("execution_runs", "run_id"),
        ("execution_jobs", "run_id"),
        ("execution_steps", "run_id"),
        ("dispatch_queue", "id"),
    ],
)
def test_a_lookup_by_text_id_can_use_the_index(db_url: str, table: str, column: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # the planner takes an index whenever one applies
        new = "\n".join(
            r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM {table} WHERE {column} = kici_uuid(%s)", (ID,))
        )
        old = "\n".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM {table} WHERE {column}::text = %s", (ID,)))
    assert "Index" in new, new
    assert "Index" not in old, old  # what the queries did before: the whole table


def test_named_queries_answer_garbage_ids_with_no_row(db_url: str) -> None:
    runs, reruns = queries.load("runs.sql"), queries.load("reruns.sql")
    with psycopg.connect(db_url, autocommit=True) as conn:
        for garbage in ["not-a-uuid", ID.upper(), "'; DROP TABLE execution_runs; --", ID]:
            assert conn.execute(runs["get_run"], {"id": garbage}).fetchall() == []
            assert conn.execute(reruns["run_root"], {"id": garbage}).fetchall() == []
