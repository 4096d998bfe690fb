"""Integration tests run against a real PostgreSQL (see tests/support/pg.py); they are never skipped."""

from __future__ import annotations

from tests.support.pg import database, db_url, empty_db_url, pg_server, pg_template, second_db

__all__ = ["database", "db_url", "empty_db_url", "pg_server", "pg_template", "second_db"]
