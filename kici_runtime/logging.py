"""Structured JSON logs on stdout, one object per line, with secrets masked.

Built on the stdlib :mod:`logging` module. Every line carries ``level`` (``debug``/``info``/``warn``/
``error``), ``message``, ``timestamp`` (ISO-8601 UTC), ``service`` and then context fields:
those bound with :func:`log_context` (``requestId``, ``runId``, ``jobId``, ...) and any passed with
``extra={...}`` at the call site, as top-level keys. Exceptions add ``error`` and ``stack``.

Masking: agent tokens (``kat_`` + 64 hex, any case) become ``kat_***`` and every value registered
with :func:`register_secret` becomes ``***``, wherever they appear (message, fields, nested values,
keys, stack traces).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
import threading
import traceback
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import IO

__all__ = [
    "JsonFormatter",
    "configure_logging",
    "log_context",
    "log_fatal_startup",
    "mask",
    "register_secret",
    "register_secrets",
    "reset_secrets",
]

_AGENT_TOKEN = re.compile(r"kat_[0-9a-f]{64}", re.IGNORECASE)
_MASK = "***"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}
# Context fields first, in this order, then call-site fields (spec §5.5).
_CONTEXT_ORDER = ("requestId", "runId", "jobId", "routingKey", "traceId", "spanId")
_RESERVED = frozenset({"level", "message", "timestamp"})
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()
_EMPTY: Mapping[str, object] = types.MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar("kici_log_context", default=_EMPTY)


def register_secret(value: str) -> None:
    """Never let ``value`` appear in a log line from now on (empty strings are ignored)."""
    global _secret_pattern
    if not value:
        return
    with _secrets_lock:
        _secrets.add(value)
        escaped = {json.dumps(s)[1:-1] for s in _secrets} | _secrets
        # Longest first so a secret containing another is masked whole.
        _secret_pattern = re.compile("|".join(re.escape(s) for s in sorted(escaped, key=len, reverse=True)))


def register_secrets(values: Iterable[str]) -> None:
    """:func:`register_secret` for each value, e.g. ``register_secrets(settings.secret_values())``."""
    for value in values:
        register_secret(value)


def reset_secrets() -> None:
    """Forget every registered secret (tests use it to keep their secrets to themselves)."""
    global _secret_pattern
    with _secrets_lock:
        _secrets.clear()
        _secret_pattern = None


def mask(text: str) -> str:
    """``text`` with agent tokens and registered secrets masked."""
    pattern = _secret_pattern
    while True:
        # Repeat until stable: masking can join the text around a secret into another secret.
        masked = _AGENT_TOKEN.sub("kat_***", text)
        if pattern is not None:
            masked = pattern.sub(_MASK, masked)
        if masked == text:
            return masked
        text = masked


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every line logged inside the block (this task and its children)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one masked JSON object (no trailing newline)."""

    def __init__(self, *, service: str = "orchestrator", static_fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.service = service
        self.static_fields = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``; never raises on odd field values (they are stringified)."""
        doc: dict[str, object] = {
            "level": _level_name(record.levelno),
            "message": record.getMessage(),
            "timestamp": _iso(record.created),
            "service": self.service,
        }
        doc.update(self.static_fields)
        context = _context.get()
        extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}
        merged = {**context, **extras}
        for key in _CONTEXT_ORDER:
            if key in merged:
                doc[key] = merged.pop(key)
        for key, value in merged.items():
            if key not in _RESERVED:
                doc[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            doc.setdefault("error", str(exc) or type(exc).__name__)
            doc["stack"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.stack_info:
            doc["stack"] = record.stack_info
        # Fast path: serialise once and look for anything to mask in the whole line. Every registered secret is
        # also registered in its JSON-escaped form, and escaping maps characters one by one, so a secret inside
        # any string of an ASCII line shows up in the line itself; only lines with a hit take the per-field path.
        text = json.dumps(_plain(doc), ensure_ascii=False, separators=(",", ":"))
        if text.isascii() and not _has_maskable(text):
            return text
        return _AGENT_TOKEN.sub("kat_***", json.dumps(_scrub(doc), ensure_ascii=False, separators=(",", ":")))


def _has_maskable(text: str) -> bool:
    pattern = _secret_pattern
    if pattern is not None and pattern.search(text) is not None:
        return True
    # A case-insensitive regex scan is slow; a plain substring test on the lowered text rules most lines out.
    return "kat_" in text.lower() and _AGENT_TOKEN.search(text) is not None


_SCALARS = frozenset({str, int, float, bool})


def _plain(value: object) -> object:
    """``value`` as JSON-ready data, converted exactly like :func:`_scrub` but without masking."""
    if type(value) in _SCALARS or value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    return str(value)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {mask(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    if isinstance(value, BaseException):
        return mask(str(value) or type(value).__name__)
    return mask(str(value))


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _iso(created: float) -> str:
    stamp = datetime.datetime.fromtimestamp(created, tz=datetime.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker class so that :func:`configure_logging` can replace its own handler only."""


def configure_logging(
    level: str = "info",
    service: str = "orchestrator",
    *,
    stream: IO[str] | None = None,
    static_fields: Mapping[str, object] | None = None,
) -> logging.Handler:
    """Send every log record of the process as JSON lines to ``stream`` (stdout by default).

    Replaces a handler installed by an earlier call; other handlers are left alone. ``level`` is a
    ``KICI_LOG_LEVEL`` value (``debug``/``info``/``warn``/``error``). ``static_fields`` are added to
    every line (e.g. ``{"environment": settings.environment}``).

    Raises:
        ValueError: unknown level.
    """
    try:
        threshold = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected debug, info, warn or error") from None
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(service=service, static_fields=static_fields))
    root.addHandler(handler)
    root.setLevel(threshold)
    return handler


def log_fatal_startup(exc: BaseException, logger: logging.Logger | None = None) -> None:
    """Log boot failure as the spec's ``Fatal startup error`` line (fields ``error`` and ``stack``)."""
    (logger or logging.getLogger("kici")).error(
        "Fatal startup error", exc_info=(type(exc), exc, exc.__traceback__)
    )
