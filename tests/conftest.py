"""Session-wide test settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import props  # noqa: F401  (loads the hypothesis profile before any test module)


@pytest.fixture(autouse=True)
def _strip_kici_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's KICI_* variables (KICI_TEST_DATABASE_URL excepted)."""
    for name in list(os.environ):
        if name.startswith("KICI_") and name != "KICI_TEST_DATABASE_URL":
            monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
