"""Structured JSON logs on stdout, one object per line, with secrets masked.

Built on the stdlib :mod:`logging` module. Every line carries ``level`` (``debug``/``info``/``warn``/
``error``), ``message``, ``timestamp`` (ISO-8601 UTC), ``service`` and then context fields:
those bound with :func:`log_context` (``requestId``, ``runId``, ``jobId``, ...) and any passed with
``extra={...}`` at the call site, as top-level keys. Exceptions add ``error`` and ``stack``.

Masking (message, fields, nested values, keys, stack traces) replaces a secret where it appears as a value,
never inside ordinary words:

- agent tokens (``kat_`` + 64 hex, any case) become ``kat_***``;
- the password of a URL (``postgresql://user:***@host/db``) and the value of a known secret field, in text
  (``password=***``, ``"token": "***"``) or as a log field (``extra={"password": ...}``);
- a value registered with :func:`register_secret`: one of at least :data:`MIN_WHOLE_SECRET` characters
  wherever it occurs, a shorter one (a database password such as ``kici``) only where it is a whole value
  (a field or message that is exactly the secret), so that the same letters inside other words stay.
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
    "MIN_WHOLE_SECRET",
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
MIN_WHOLE_SECRET = 12
"""Registered secrets at least this long are masked wherever they occur; shorter ones only as whole values."""
# scheme://user:password@ -> scheme://user:***@ (the password may hold ":"; "/", "@" and spaces end it)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<value>[^/\s@]+)(?=@)")
_FIELD_WORDS = r"password|passwd|pwd|secret|token|api[_-]?key|private[_-]?key|client[_-]?secret"
# password=..., secret: ..., "token": "..." (libpq keyword strings, query strings, JSON or YAML in text)
_TEXT_FIELD = re.compile(
    rf"(?P<head>(?<![A-Za-z0-9])(?:{_FIELD_WORDS})[\"']?\s*[=:]\s*)"
    r"(?:(?P<quote>[\"'])(?P<quoted>[^\"']*)(?P=quote)|(?P<value>[^\s\"'&,;}\])]+))",
    re.IGNORECASE,
)
# Log fields whose value is a secret, compared lower-case without "_" and "-".
_SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "privatekey",
        "apikey",
        "authorization",
        "webhooksecret",
        "secretkey",
        "clientsecret",
        "accesstoken",
        "refreshtoken",
        "admintoken",
        "agenttoken",
        "platformtoken",
    }
)
# Lower-case words whose presence sends a line through per-field masking (a superset of the rules above).
_HINT_WORDS = (
    "://",
    "passw",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "privatekey",
    "private_key",
    "private-key",
    "authorization",
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Context fields first, in this order, then call-site fields (spec §5.5).
_CONTEXT_ORDER = ("requestId", "runId", "jobId", "routingKey", "traceId", "spanId")
_RESERVED = frozenset({"level", "message", "timestamp"})
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

_secrets: set[str] = set()
_short_secrets: frozenset[str] = frozenset()
_long_pattern: re.Pattern[str] | None = None  # long secrets, raw and JSON-escaped
_hint_pattern: re.Pattern[str] | None = None  # what to look for in a serialised line
_secrets_lock = threading.Lock()
_EMPTY: Mapping[str, object] = types.MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar("kici_log_context", default=_EMPTY)


def _alternation(values: Iterable[str]) -> str:
    # Longest first so a secret containing another is masked whole.
    return "|".join(re.escape(v) for v in sorted(set(values), key=len, reverse=True))


def _escaped(value: str) -> str:
    return json.dumps(value)[1:-1]


def register_secret(value: str) -> None:
    """Never let ``value`` appear in a log line from now on (empty strings are ignored).

    A value of at least :data:`MIN_WHOLE_SECRET` characters is masked wherever it occurs; a shorter one where
    it is a whole value (and, like any secret, as a URL password or a secret field's value).
    """
    global _short_secrets, _long_pattern, _hint_pattern
    if not value:
        return
    with _secrets_lock:
        _secrets.add(value)
        long = [s for s in _secrets if len(s) >= MIN_WHOLE_SECRET]
        short = [s for s in _secrets if len(s) < MIN_WHOLE_SECRET]
        _short_secrets = frozenset(short)
        _long_pattern = re.compile(_alternation([*long, *map(_escaped, long)])) if long else None
        # In a serialised line a short secret that is a whole value is a whole JSON string: "<escaped>".
        hints = [*long, *map(_escaped, long), *(f'"{_escaped(s)}"' for s in short)]
        _hint_pattern = re.compile(_alternation(hints))


def register_secrets(values: Iterable[str]) -> None:
    """:func:`register_secret` for each value, e.g. ``register_secrets(settings.secret_values())``."""
    for value in values:
        register_secret(value)


def reset_secrets() -> None:
    """Forget every registered secret (tests use it to keep their secrets to themselves)."""
    global _short_secrets, _long_pattern, _hint_pattern
    with _secrets_lock:
        _secrets.clear()
        _short_secrets = frozenset()
        _long_pattern = None
        _hint_pattern = None


def _mask_url(match: re.Match[str]) -> str:
    return match.group("head") + _MASK


def _mask_field(match: re.Match[str]) -> str:
    quote = match.group("quote")
    if quote is not None:
        inner = match.group("quoted")
        return match.group(0) if not inner or inner.endswith(_MASK) else f"{match.group('head')}{quote}{_MASK}{quote}"
    value = match.group("value")
    return match.group(0) if value.endswith(_MASK) else match.group("head") + _MASK


def mask(text: str, *, whole: bool = True) -> str:
    """``text`` with agent tokens, URL passwords, secret field values and registered secrets masked.

    ``whole=False`` is for field names: a short secret is masked only as a whole value, and a field name is not
    a value (a password ``message`` must not hide the ``message`` field itself).
    """
    if whole and text in _short_secrets:
        return _MASK
    long = _long_pattern
    while True:
        # Repeat until stable: masking can join the text around a secret into another secret.
        # Whole long secrets first: a rule below could otherwise cut one in two and leave a part of it.
        masked = long.sub(_MASK, text) if long is not None else text
        masked = _AGENT_TOKEN.sub("kat_***", masked)
        masked = _URL_PASSWORD.sub(_mask_url, masked)
        masked = _TEXT_FIELD.sub(_mask_field, masked)
        if masked == text:
            return masked
        text = masked


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("_", "").replace("-", "") in _SECRET_KEYS


def _mask_value(value: str) -> str:
    """A secret field's value: masked whole, unless masking already hid the secret part (``kat_***``)."""
    masked = mask(value)
    return masked if masked != value or not value else _MASK


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
    """True when per-field masking could change the serialised line ``text`` (a cheap superset test)."""
    pattern = _hint_pattern
    if pattern is not None and pattern.search(text) is not None:
        return True
    # A case-insensitive regex scan is slow; plain substring tests on the lowered text rule most lines out.
    lowered = text.lower()
    return any(word in lowered for word in _HINT_WORDS) or ("kat_" in lowered and _AGENT_TOKEN.search(text) is not None)


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
        return {
            mask(str(k), whole=False): _mask_value(v) if isinstance(v, str) and _is_secret_key(k) else _scrub(v)
            for k, v in value.items()
        }
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
    # httpx logs every request at INFO (the auto-scaler polls its engine every few seconds): debug only
    logging.getLogger("httpx").setLevel(threshold if threshold <= logging.DEBUG else logging.WARNING)
    return handler


def log_fatal_startup(
    exc: BaseException, logger: logging.Logger | None = None, *, message: str | None = None, with_stack: bool = True
) -> None:
    """Log boot failure as the spec's ``Fatal startup error`` line: ``error`` (``message`` or the exception's
    text) and, unless ``with_stack`` is False (a deliberate, explained refusal), ``stack``."""
    (logger or logging.getLogger("kici")).error(
        "Fatal startup error",
        exc_info=(type(exc), exc, exc.__traceback__) if with_stack else None,
        extra={"error": message or str(exc) or type(exc).__name__},
    )
