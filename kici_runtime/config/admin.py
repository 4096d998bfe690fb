"""``kici-admin``'s own settings: the defaults of its global options, read from the environment.

Imports only the configuration sources (no adapters), so the admin CLI stays an HTTP client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kici_runtime.config.source import Reader, Secret, fail

__all__ = ["AdminSettings", "load_admin_settings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminSettings:
    """Defaults of ``kici-admin``'s global options (flags override them)."""

    url: str
    token: Secret | None


def load_admin_settings(environ: Mapping[str, str]) -> AdminSettings:
    """``KICI_ADMIN_URL`` (default ``http://localhost:4000``) and ``KICI_ADMIN_TOKEN``.

    Raises:
        SettingsError: ``KICI_ADMIN_URL`` is not an http(s) URL.
    """
    reader = Reader(environ, {}, None)
    url = reader.url("KICI_ADMIN_URL", ("http", "https")) or "http://localhost:4000"
    token = reader.secret("KICI_ADMIN_TOKEN")
    if reader.issues:
        fail(reader.issues)
    return AdminSettings(url=url.rstrip("/"), token=token)
