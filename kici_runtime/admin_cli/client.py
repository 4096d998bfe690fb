"""What every ``kici-admin`` command shares: the admin API client, failures that print one ``Error:`` line,
secret reading and the table and JSON printers."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import click
import httpx

from kici_core import errors
from kici_runtime.version import VERSION

__all__ = [
    "AdminClient",
    "ApiError",
    "CliFailure",
    "client",
    "die",
    "echo_json",
    "human_bytes",
    "read_secret",
    "shorten",
    "table",
]


class CliFailure(click.ClickException):
    """A one-line failure: ``Error: <message>`` on stderr, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class ApiError(CliFailure):
    """A non-2xx admin API answer: ``HTTP <status>: <error>``; commands may catch it to say more."""

    def __init__(self, message: str, status: int, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = body if isinstance(body, dict) else {}


def die(message: str, exit_code: int = 1) -> NoReturn:
    raise CliFailure(message, exit_code)


@dataclass(slots=True)
class AdminClient:
    """A small JSON client for the admin API; ``transport`` lets tests talk to an in-process app."""

    url: str
    token: str | None
    transport: httpx.BaseTransport | None = None
    timeout: float = 30.0
    _http: httpx.Client | None = field(default=None, repr=False)

    def _client(self) -> httpx.Client:
        if self.token is None:
            die("--token or KICI_ADMIN_TOKEN is required")
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.url,
                transport=self.transport,
                timeout=self.timeout,
                headers={"Authorization": f"Bearer {self.token}", "User-Agent": f"kici-admin/{VERSION}"},
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON body, or None for an empty/204 answer.

        Raises:
            ApiError: ``HTTP <status>: <error>`` (exit 1).
            CliFailure: the server could not be reached (exit 69).
        """
        clean = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
        try:
            response = self._client().request(method, path, json=body, params=clean)
        except httpx.TransportError as exc:
            die(f"cannot reach the orchestrator at {self.url}: {type(exc).__name__}", errors.Unavailable.exit_code)
        if response.status_code == 204 or not response.content:
            if response.is_success:
                return None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not response.is_success:
            message = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), str) else None
            if message is None:
                message = response.text.strip()[:300] or response.reason_phrase
            if isinstance(data, dict) and isinstance(data.get("details"), list):
                parts = []
                for d in data["details"]:
                    if isinstance(d, dict):
                        where = ".".join(str(p) for p in d.get("path") or []) or "body"
                        parts.append(f"{where} {d.get('message')}")
                if parts:
                    message = f"{message}: {'; '.join(parts)}"
            raise ApiError(f"HTTP {response.status_code}: {message}", response.status_code, data)
        return data


def echo_json(value: Any) -> None:
    """The raw API JSON, 2-space indent."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def read_secret(
    value: str | None, from_env: str | None, use_stdin: bool, *, environ: Callable[[str], str | None] = os.environ.get
) -> str | None:
    """Resolve a secret: ``value`` (``@file`` reads the file, trimmed), then ``--from-env``, then ``--stdin``."""
    if value:
        if value.startswith("@"):
            path = value[1:]
            try:
                with open(path, encoding="utf-8") as fh:
                    return fh.read().strip()
            except OSError as exc:
                die(f"cannot read {path}: {exc.strerror or exc}", errors.InvalidInput.exit_code)
        return value
    if from_env:
        found = environ(from_env)
        if found is None:
            die(f"Environment variable {from_env} is not set")
        return found.strip()
    if use_stdin:
        return "\n".join(line.rstrip("\r\n") for line in sys.stdin.readlines()).strip()
    return None


def shorten(text: str, width: int, *, keep_tail: bool = True) -> str:
    """``text`` cut to ``width`` characters with ``…``: in the middle, keeping its head and its tail, or at the
    end (``keep_tail=False``)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    tail = (width - 1) // 3 if keep_tail else 0
    return text[: width - 1 - tail] + "…" + (text[-tail:] if tail else "")


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    max_width: int | None = None,
    shrink: Sequence[tuple[int, int]] = (),
    cut_at_end: Sequence[int] = (),
) -> str:
    """Columns separated by two spaces and padded, a dash rule under the header.

    With ``max_width``, the columns listed in ``shrink`` as ``(index, narrowest)`` are narrowed in that order,
    each down to its narrowest width before the next one, until a line fits; their longer cells are shortened
    with ``…`` in the middle, or at the end for the columns in ``cut_at_end`` (:func:`shorten`).
    """
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    if max_width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - max_width
        for index, narrowest in shrink:
            if excess <= 0:
                break
            cut = min(excess, max(0, widths[index] - max(narrowest, len(headers[index]))))
            widths[index] -= cut
            excess -= cut
        cells = [
            [shorten(c, w, keep_tail=i not in cut_at_end) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
            for r in cells
        ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def human_bytes(n: int) -> str:
    """``<n>B`` under 1 KiB, ``x.xKB`` under 1 MiB, else ``x.xxMB``."""
    if n < 1024:
        return f"{n}B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f}KB"
    return f"{n / (1024 * 1024):.2f}MB"


def client(ctx: click.Context) -> AdminClient:
    """The invocation's admin client (set up by the global options)."""
    found = ctx.meta.get("kici.client")
    if not isinstance(found, AdminClient):  # pragma: no cover - the group callback always sets it
        die("internal: no client")
    return found
