"""Records and key material shared by the local GitHub API server: App keys, clocks, requests, faults, replies."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class AppKey:
    """A GitHub App key pair for tests: ``private_pem`` for the client, ``public_pem`` for the server."""

    private_pem: str = field(repr=False)
    public_pem: bytes


@functools.lru_cache(maxsize=4)
def app_key(index: int = 0) -> AppKey:
    """A 2048-bit RSA key pair, generated once per process per ``index`` (PKCS#1 PEM, like GitHub's)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return AppKey(private_pem=private, public_pem=public)


class RecordingSleep:
    """An injectable ``sleep`` that records the delays asked for and only yields (no test waits for real)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await anyio.lowlevel.checkpoint()


class ManualClock:
    """Epoch seconds that move only when told to; callable like ``time.time``."""

    def __init__(self, start: float | None = None) -> None:
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it (header names lower-case, path without the prefix)."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes


@dataclass
class Fault:
    pattern: str
    remaining: int
    status: int | None = None  # None with drop=False: delay only
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str | None = None
    delay: float = 0.0
    drop: bool = False


@dataclass
class App:
    app_id: str
    public_key: bytes
    slug: str
    name: str
    owner: str


@dataclass
class Installation:
    installation_id: int
    app_id: str
    repos: set[str]


@dataclass
class Token:
    installation_id: int
    expires_at: float


class Reply(Exception):
    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None, raw: bool = False):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.raw = raw
