"""Keep third-party wire dumps out of the logs: no part of a secret may reach a log line at any level.

At ``DEBUG`` the websockets library logs every frame and handshake header it sends or receives (``> TEXT
'{"type":"auth.request","token":"kat_…' [..]``, ``> Authorization: Bearer …``), cut to a prefix that the
log masker cannot recognise as a token; uvicorn's WebSocket implementation passes its ``uvicorn.error``
logger to the library, so the same lines appear there. :func:`install` adds a filter to those loggers that
drops these dumps (their message templates start with ``<`` or ``>``); everything else they log is kept.
Every program calls it right after configuring logging.
"""

from __future__ import annotations

import logging

__all__ = ["WIRE_LOGGERS", "WireDumpFilter", "install"]

WIRE_LOGGERS = (
    "websockets",
    "websockets.client",
    "websockets.server",
    "websockets.protocol",
    "uvicorn",
    "uvicorn.error",
)
"""Loggers that may carry frame or header dumps (filters apply to records created on the logger itself)."""


class WireDumpFilter(logging.Filter):
    """Drops frame and header dumps (``< …`` / ``> …`` message templates)."""

    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg
        return not (isinstance(template, str) and template[:2] in ("< ", "> "))


_FILTER = WireDumpFilter()


def install() -> None:
    """Attach the filter to every logger of :data:`WIRE_LOGGERS` (idempotent)."""
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
