"""A client of the Docker Engine HTTP API (also served by Podman), over a unix socket or TCP, with httpx.

Only what the scaler uses: ping and version, image inspect and pull, the isolated network, containers
(create, start, inspect, stop, remove, list by label). Every engine error becomes :class:`EngineError`
carrying the engine's own message (``{"message": ...}``), so a failed spawn can say what the engine said.
No ``docker`` or ``podman`` binary is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from kici_adapters.containers import unix_http
from kici_core import errors, netrules
from kici_core.jsontypes import JSONObject

__all__ = ["ContainerInfo", "EngineClient", "EngineError", "ManagedContainer"]

API_VERSION = "v1.41"
MANAGED_LABEL = "kici-managed"


class EngineError(errors.Unavailable):
    """The container engine refused a request or could not be reached. ``status`` is the HTTP status (0: no
    answer); the message is the engine's."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerInfo:
    """What inspect says about a container."""

    id: str
    running: bool
    status: str
    exit_code: int | None
    ip: str | None
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedContainer:
    """A container of the list endpoint."""

    id: str
    name: str
    state: str
    labels: Mapping[str, str]


class EngineClient:
    """The Engine API at ``socket_path`` (a unix socket) or ``host`` (``tcp://h:p`` / ``http(s)://h:p``).

    Args:
        timeout: seconds per request (image pulls get ``pull_timeout``).
    """

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        host: str | None = None,
        timeout: float = 30.0,
        pull_timeout: float = 600.0,
    ) -> None:
        if (socket_path is None) == (host is None):
            raise errors.ConfigError("an engine needs exactly one of socket_path or host")
        if socket_path is not None:
            transport = unix_http.unix_transport(socket_path)
            base = "http://engine"
        else:
            assert host is not None
            transport = httpx.AsyncHTTPTransport()
            base = "http://" + host.removeprefix("tcp://") if host.startswith("tcp://") else host
        self.where = socket_path or host or ""
        self._pull_timeout = pull_timeout
        self._http = httpx.AsyncClient(
            transport=transport, base_url=f"{base.rstrip('/')}/{API_VERSION}", timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JSONObject | None = None,
        ok: Sequence[int] = (200, 201, 204),
        seconds: float | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                json=body,
                timeout=seconds if seconds is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise EngineError(f"container engine at {self.where} unreachable: {exc or type(exc).__name__}") from None
        if response.status_code not in ok:
            raise EngineError(_message(response), response.status_code)
        return response

    # ------------------------------------------------------------------------------------ system
    async def ping(self) -> None:
        """``GET /_ping``. Raises ``EngineError`` when the engine does not answer OK."""
        await self._call("GET", "/_ping")

    # ------------------------------------------------------------------------------------ images
    async def image_exists(self, image: str) -> bool:
        """``GET /images/{name}/json``: True when the engine has the image."""
        response = await self._call("GET", f"/images/{quote(image, safe='')}/json", ok=(200, 404))
        return response.status_code == 200

    async def pull(self, image: str) -> None:
        """``POST /images/create``; raises ``EngineError`` with the engine's message when the pull fails
        (errors arrive inside the progress stream, so the stream is read to the end)."""
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
        response = await self._call(
            "POST", "/images/create", params={"fromImage": name, "tag": tag}, seconds=self._pull_timeout
        )
        for line in response.text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(str(event.get("error")), 500)

    # ------------------------------------------------------------------------------------ network
    async def ensure_network(self) -> None:
        """Create the isolated bridge network once (an existing one, or a concurrent creation, is fine)."""
        response = await self._call("GET", f"/networks/{netrules.NETWORK}", ok=(200, 404))
        if response.status_code == 200:
            return
        body: JSONObject = {
            "Name": netrules.NETWORK,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": {MANAGED_LABEL: "true"},
            "IPAM": {"Driver": "default", "Config": [{"Subnet": netrules.SUBNET, "Gateway": netrules.GATEWAY}]},
        }
        await self._call("POST", "/networks/create", body=body, ok=(200, 201, 409))

    # ------------------------------------------------------------------------------------ containers
    async def create(self, name: str, spec: JSONObject) -> str:
        """``POST /containers/create?name=``; the new container's id."""
        response = await self._call("POST", "/containers/create", params={"name": name}, body=spec)
        return str(response.json()["Id"])

    async def start(self, container_id: str) -> None:
        """``POST /containers/{id}/start`` (already started is fine)."""
        await self._call("POST", f"/containers/{quote(container_id, safe='')}/start", ok=(204, 304))

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        """``GET /containers/{id}/json``; None when the container does not exist."""
        response = await self._call("GET", f"/containers/{quote(container_id, safe='')}/json", ok=(200, 404))
        if response.status_code == 404:
            return None
        data = response.json()
        state = data.get("State") or {}
        networks = (data.get("NetworkSettings") or {}).get("Networks") or {}
        ip = (networks.get(netrules.NETWORK) or {}).get("IPAddress") or None
        return ContainerInfo(
            id=str(data.get("Id")),
            running=bool(state.get("Running")),
            status=str(state.get("Status") or ""),
            exit_code=state.get("ExitCode"),
            ip=ip,
            labels=(data.get("Config") or {}).get("Labels") or {},
        )

    async def stop(self, container_id: str, *, grace_seconds: int = 5) -> None:
        """``POST /containers/{id}/stop?t=``; a stopped or missing container is fine."""
        await self._call(
            "POST",
            f"/containers/{quote(container_id, safe='')}/stop",
            params={"t": str(grace_seconds)},
            ok=(204, 304, 404),
            seconds=grace_seconds + 30.0,
        )

    async def remove(self, container_id: str) -> None:
        """``DELETE /containers/{id}?force=true&v=true``; a missing container is fine."""
        await self._call(
            "DELETE",
            f"/containers/{quote(container_id, safe='')}",
            params={"force": "true", "v": "true"},
            ok=(204, 404),
        )

    async def list_managed(self, labels: Mapping[str, str] | None = None) -> list[ManagedContainer]:
        """Every container (running or not) labelled ``kici-managed=true`` (and ``labels``)."""
        wanted = [f"{MANAGED_LABEL}=true", *(f"{k}={v}" for k, v in (labels or {}).items())]
        response = await self._call(
            "GET", "/containers/json", params={"all": "true", "filters": json.dumps({"label": wanted})}
        )
        out = []
        for item in response.json():
            names = item.get("Names") or [""]
            out.append(
                ManagedContainer(
                    id=str(item.get("Id")),
                    name=str(names[0]).lstrip("/"),
                    state=str(item.get("State") or ""),
                    labels=item.get("Labels") or {},
                )
            )
        return out


def _message(response: httpx.Response) -> str:
    try:
        data: Any = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    text = response.text.strip()[:300]
    return text or f"HTTP {response.status_code}"
