"""Shared start-up of the two orchestrator entry points (``kici-server`` and ``kici-standalone``)."""

from __future__ import annotations

import logging
import sys
from typing import Literal, NoReturn

import anyio
import click

from kici_core import errors
from kici_runtime import logging as kici_logging
from kici_runtime import wirelogs
from kici_runtime.config import settings as config
from kici_runtime.orchestrator import eventloop, heap

log = logging.getLogger("kici.runtime")

UVICORN_STARTUP_FAILURE = 3
"""uvicorn's exit code when its listener cannot start (it has logged the socket error)."""


def run(entry_point: Literal["server", "standalone"], config_path: str | None, migrate_only: bool) -> None:
    """Load settings, configure logging, then serve (or only migrate). Exits non-zero on a fatal error.

    A fatal start-up error the project raises on purpose (a :class:`~kici_core.errors.KiciError`: bad
    configuration, an unreachable database) is reported as one ``Fatal startup error`` log line and one
    ``kici-<entry>: <what is wrong and how to fix it>`` line on stderr, without a traceback; anything else is
    a crash and keeps its traceback.
    """
    kici_logging.configure_logging("info")
    heap.configure()
    try:
        settings = config.from_process_env(entry_point, config_path=config_path)
    except errors.ConfigError as exc:
        _fatal(entry_point, exc, exit_code=1)
    kici_logging.register_secrets(settings.secret_values())
    kici_logging.configure_logging(settings.log_level, static_fields={"environment": settings.environment})
    wirelogs.install()  # no websockets frame dumps (they carry tokens) at any level
    for warning in settings.warnings:
        log.warning(warning)
    log.info("Configuration loaded", extra={"settings": settings.describe()})
    from kici_runtime.orchestrator import (
        wiring,  # imported late: importing opens nothing, but keeps --help fast
    )

    try:
        if migrate_only:
            anyio.run(wiring.migrate_only, settings)
            return
        anyio.run(wiring.serve, settings, backend_options=eventloop.backend_options())
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        if exc.code != UVICORN_STARTUP_FAILURE:
            raise
        _fatal(
            entry_point,
            errors.ConfigError(
                f"the HTTP listener could not start on {settings.host}:{settings.port} (the log line above says why); "
                "if the address is in use, stop the process listening there or choose another KICI_PORT"
            ),
            exit_code=1,
        )
    except BaseException as exc:
        found = startup_error(exc)
        if found is None:
            raise  # a real crash: keep the traceback
        _fatal(entry_point, found, exit_code=found.exit_code or 1)


def startup_error(exc: BaseException) -> errors.KiciError | None:
    """The deliberate error behind ``exc`` (also when a task group wrapped it alone), else None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, errors.KiciError) else None


def fix_hint(exc: errors.KiciError) -> str:
    """``exc``'s message on one line, with what to do about it when the message does not say."""
    message = exc.message
    if isinstance(exc, errors.StorageUnavailable) and message.startswith("database unavailable"):
        message += "; check KICI_DATABASE_URL and that the PostgreSQL server is running and reachable"
    return message


def _fatal(entry_point: str, exc: errors.KiciError, *, exit_code: int) -> NoReturn:
    text = fix_hint(exc)
    kici_logging.log_fatal_startup(exc, message=text, with_stack=False)
    click.echo(f"kici-{entry_point}: {text}", err=True)
    sys.exit(exit_code)
