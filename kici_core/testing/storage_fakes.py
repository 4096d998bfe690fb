"""In-memory object storage and secret store (re-exported by :mod:`kici_core.testing.fakes`)."""

from __future__ import annotations

from kici_core import errors


class FakeBlobStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.durable: dict[str, bool] = {}  # key -> whether its last put asked for durability
        self.fail_puts = False

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        if self.fail_puts:
            raise errors.StorageUnavailable("object storage unavailable")
        self.objects[key] = bytes(data)
        self.durable[key] = durable

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise errors.NotFound(f"object not found: {key}") from None

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class FakeSecretStore:
    """Keeps values in a dict; ``sealed`` shows what a real store would write (never the plaintext)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], str] = {}

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        return self.values.get((org_id, scope, key))

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None:
        self.values[(org_id, scope, key)] = value

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        doomed = [k for k in self.values if k[0] == org_id and k[1] == scope and (key is None or k[2] == key)]
        for k in doomed:
            del self.values[k]
        return len(doomed)
