"""The release version of every program (``kici-server``, ``kici-standalone``, ``kici-admin``, ``kici-agent``,
``kici-relay``): read once from the installed distribution's metadata, so ``pyproject.toml`` is the only place
that names it."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "kici"
UNKNOWN = "0+unknown"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed (PYTHONPATH)
        return UNKNOWN


VERSION = _installed_version()
"""``[project] version`` of ``pyproject.toml``, as installed (:data:`UNKNOWN` when not installed)."""
