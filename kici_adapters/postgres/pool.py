"""The PostgreSQL connection pool, and the one place where driver errors become project errors.

Every store borrows connections from :class:`Database`. Whatever happens inside its context managers,
callers see :mod:`kici_core.errors`, never a raw psycopg exception for an outage:

* connection failures, server shutdowns, pool timeouts and other ``OperationalError`` s become
  ``StorageUnavailable`` (the message never carries the password from the URL);
* an ``IntegrityError`` that escapes the block (a unique or foreign-key violation the store did not
  handle itself) becomes ``Conflict``.

Other driver errors (syntax errors, bad parameters) are bugs and propagate unchanged.

The pool checks every connection as it is handed out, so connections killed by a server restart are
discarded and replaced instead of failing the next query; during an outage a checkout waits at most
``timeout`` seconds and then raises ``StorageUnavailable``.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import psycopg
import psycopg_pool
from psycopg.rows import DictRow, dict_row

from kici_core.errors import Conflict, InvalidInput, StorageUnavailable, Unavailable

Connection = psycopg.AsyncConnection[DictRow]
"""What the context managers yield: an async connection whose rows are dicts."""

LOOP_ERRORS: tuple[type[Exception], ...] = (Unavailable, psycopg.Error)
"""What a background loop that must outlive one failed pass catches: outages (``Unavailable`` once translated)
and the driver errors the translation leaves alone (a statement the server rejected)."""

IDLE_CHECK_SECONDS = 2.0
"""A pooled connection idle longer than this is probed before it is lent out."""
DEFAULT_MAX_SIZE = 10


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and error messages)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Re-raise driver errors from the block as project errors (see the module docstring)."""
    try:
        yield
    except psycopg.IntegrityError as exc:
        raise Conflict(_describe(exc, url)) from exc
    except psycopg.DataError as exc:
        # a value the database cannot hold (a NUL character, a malformed uuid...): bad input, not an outage
        raise InvalidInput(f"invalid value: {_describe(exc, url)}") from exc
    except (psycopg.OperationalError, psycopg_pool.PoolClosed) as exc:
        raise StorageUnavailable(f"database unavailable: {_describe(exc, url)}") from exc
    except psycopg.InterfaceError as exc:
        # "the connection is closed" and friends: the server went away under us.
        raise StorageUnavailable(f"database unavailable: {_describe(exc, url)}") from exc


def _describe(exc: BaseException, url: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return text


class Database:
    """An async psycopg connection pool with error translation.

    Args:
        url: libpq URL (``postgresql://`` or ``postgres://``).
        min_size: connections kept open.
        max_size: upper bound on connections (default 10).
        timeout: seconds a checkout waits for a connection before ``StorageUnavailable``.
        connect_timeout: seconds one connection attempt may take.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = DEFAULT_MAX_SIZE,
        timeout: float = 10.0,
        connect_timeout: int = 5,
        name: str = "kici",
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._last_returned: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
        self._pool: psycopg_pool.AsyncConnectionPool[Connection] = psycopg_pool.AsyncConnectionPool(
            url,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs={"row_factory": dict_row, "connect_timeout": connect_timeout},
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            check=self._check,
            reset=self._returned,
            open=False,
            name=name,
        )

    async def _returned(self, conn: Connection) -> None:
        self._last_returned[conn] = time.monotonic()

    async def _check(self, conn: Connection) -> None:
        # A connection that was in use a moment ago is alive; one idle for a while may have been cut by a
        # server restart, so it is probed before use (and replaced by the pool when the probe fails). This
        # saves a round trip on every borrow under load.
        last = self._last_returned.get(conn)
        if last is not None and time.monotonic() - last < IDLE_CHECK_SECONDS:
            return
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)

    @property
    def url(self) -> str:
        """The connection URL (with its password: do not log it; use :func:`redact_url`)."""
        return self._url

    async def open(self, *, wait_seconds: float = 10.0) -> None:
        """Open the pool and wait until ``min_size`` connections are ready.

        Raises:
            StorageUnavailable: the server cannot be reached within ``wait_seconds``.
        """
        try:
            with translate_errors(self._url):
                await self._pool.open(wait=True, timeout=wait_seconds)
        except StorageUnavailable:
            await self._pool.close()
            raise

    async def close(self) -> None:
        """Close every connection; borrowed ones are closed when returned."""
        await self._pool.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """Borrow a pooled connection. Work in it is committed when the block exits normally and rolled
        back when it raises. Raises ``StorageUnavailable`` / ``Conflict`` as described above."""
        with translate_errors(self._url):
            async with self._pool.connection() as conn:
                yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Borrow a connection inside one explicit transaction (committed on normal exit)."""
        with translate_errors(self._url):
            async with self._pool.connection() as conn, conn.transaction():
                yield conn

    @asynccontextmanager
    async def dedicated(self, *, autocommit: bool = True) -> AsyncIterator[Connection]:
        """A connection outside the pool, for ``LISTEN`` and session advisory locks; closed on exit."""
        with translate_errors(self._url):
            conn = await connect(self._url, autocommit=autocommit, connect_timeout=self._connect_timeout)
            async with owned(conn):
                yield conn

    def stats(self) -> dict[str, Any]:
        """The pool's counters (sizes, waits, errors), for diagnostics."""
        return dict(self._pool.get_stats())


@asynccontextmanager
async def owned(conn: Connection) -> AsyncIterator[Connection]:
    """Use a connection of one's own (not pooled) for the block: committed on a normal exit, rolled back when it
    raises, and closed in every case.

    psycopg's own ``async with conn`` rolls back before closing; when the block ends by cancellation, that
    rollback can meet the cancellation again (psycopg yields to the event loop after 5 ms without yielding) and
    the connection would stay open until garbage collection.
    """
    try:
        async with conn:
            yield conn
    finally:
        if not conn.closed:
            with anyio.CancelScope(shield=True):
                await conn.close()


async def connect(url: str, *, autocommit: bool = False, connect_timeout: int = 5) -> Connection:
    """Open a single connection with dict rows. Raises ``StorageUnavailable`` when unreachable."""
    with translate_errors(url):
        return await psycopg.AsyncConnection.connect(
            url, autocommit=autocommit, row_factory=dict_row, connect_timeout=connect_timeout
        )
