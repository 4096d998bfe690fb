"""Shared start-up of the two orchestrator entry points (``kici-server`` and ``kici-standalone``)."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import anyio
import click

from kici_core import errors
from kici_runtime import config, heap
from kici_runtime import logging as kici_logging

log = logging.getLogger("kici.runtime")


def backend_options() -> dict[str, bool]:
    """Run on uvloop when it is installed (a faster event loop; asyncio semantics are unchanged)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def run(entry_point: Literal["server", "standalone"], config_path: str | None, migrate_only: bool) -> None:
    """Load settings, configure logging, then serve (or only migrate). Exits non-zero on a fatal error."""
    kici_logging.configure_logging("info")
    heap.configure()
    try:
        settings = config.from_process_env(entry_point, config_path=config_path)
    except errors.ConfigError as exc:
        kici_logging.log_fatal_startup(exc)
        click.echo(f"kici-{entry_point}: {exc}", err=True)
        sys.exit(1)
    kici_logging.register_secrets(settings.secret_values())
    kici_logging.configure_logging(settings.log_level, static_fields={"environment": settings.environment})
    for warning in settings.warnings:
        log.warning(warning)
    log.info("Configuration loaded", extra={"settings": settings.describe()})
    from kici_runtime import wiring  # imported late: importing opens nothing, but keeps --help fast

    try:
        if migrate_only:
            anyio.run(wiring.migrate_only, settings)
            return
        anyio.run(wiring.serve, settings, backend_options=backend_options())
    except errors.KiciError as exc:
        kici_logging.log_fatal_startup(exc)
        click.echo(f"kici-{entry_point}: {exc}", err=True)
        sys.exit(exc.exit_code if exc.exit_code != 0 else 1)
    except KeyboardInterrupt:
        pass
