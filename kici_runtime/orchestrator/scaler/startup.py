"""The auto-scaler's start-up, in the order of operations spec §7.1, before the orchestrator opens its database.

1. load ``scalers.yaml`` (+ ``scalers.d``), validate (path-named errors, exit 78);
2. label-set overlap check -> ``Scaler config has label-set overlaps`` (exit 1 after a 30 s back-off, so a
   supervisor restarting the process does not spin);
3. required tools: a scaler with neither ``host`` nor ``socketPath`` needs ``docker`` or ``podman`` on
   ``PATH`` -> ``Required tools validation failed:`` + one line per scaler (same back-off);
4. per scaler: the nftables check unless ``networkIsolation: false`` (the deploy guide's messages, exit 1),
   runtime detection (``Detected <docker|podman> at <path>`` or ``No container runtime found...``), the
   isolated network and the ``ip kici`` table.

Restoring state, orphan removal and warm pools follow in
:class:`kici_runtime.orchestrator.scaler.service.ScalerService`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from kici_adapters.containers.engine import EngineClient, EngineError
from kici_adapters.containers.nftables import NftRunner, check_nftables
from kici_core import errors, scaling
from kici_runtime.orchestrator.scaler import config as scaler_config

__all__ = [
    "BACKOFF_SECONDS",
    "NO_RUNTIME",
    "Engine",
    "Prepared",
    "ScalerStartupError",
    "check_config",
    "from_settings",
    "prepare",
    "probe_paths",
]

log = logging.getLogger("kici.scaler")

BACKOFF_SECONDS = 30.0
NO_RUNTIME = "No container runtime found. Install Docker or Podman, or configure host."
ISOLATION_DISABLED = "Network isolation disabled — skipping isolated network and nftables setup"


class ScalerStartupError(errors.ConfigError):
    """The auto-scaler cannot start, so the orchestrator does not either (exit 1). ``backoff_seconds`` is how
    long to wait before exiting (30 s for configuration problems a restart cannot fix, else 0)."""

    exit_code = 1

    def __init__(self, message: str, *, backoff_seconds: float = 0.0) -> None:
        self.backoff_seconds = backoff_seconds
        super().__init__(message)


@dataclass(slots=True, kw_only=True)
class Engine:
    """The container engine one or more scalers talk to."""

    client: EngineClient
    runtime: str
    where: str
    socket_path: str | None


@dataclass(slots=True, kw_only=True)
class Prepared:
    """What a successful start-up leaves: the configuration, an engine per scaler, and the ``nft`` runner
    (None when no scaler isolates its network)."""

    config: scaling.ScalerConfig
    engines: dict[str, Engine] = field(default_factory=dict)
    nft: NftRunner | None = None

    async def aclose(self) -> None:
        for engine in {id(e.client): e for e in self.engines.values()}.values():
            await engine.client.aclose()


def probe_paths(env: Mapping[str, str]) -> list[str]:
    """Where runtime detection looks, in order."""
    paths = ["/var/run/docker.sock", "/run/podman/podman.sock"]
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(str(Path(env["XDG_RUNTIME_DIR"]) / "podman" / "podman.sock"))
    return paths


def check_config(config: scaling.ScalerConfig, *, which: Callable[[str], str | None] = shutil.which) -> None:
    """Steps 2 and 3: label-set overlaps, then the required tools.

    Raises:
        ScalerStartupError: with the spec's heading and one line per problem, and a 30 s back-off.
    """
    overlaps = scaling.label_set_overlaps(config)
    if overlaps:
        raise ScalerStartupError(
            "\n".join(["Scaler config has label-set overlaps:", *(f"  - {o}" for o in overlaps)]),
            backoff_seconds=BACKOFF_SECONDS,
        )
    missing = [
        f"  - scaler {s.name}: needs docker or podman on PATH (or set socketPath or host)"
        for s in config.scalers
        if s.host is None and s.socket_path is None and which("docker") is None and which("podman") is None
    ]
    if missing:
        raise ScalerStartupError(
            "\n".join(["Required tools validation failed:", *missing]), backoff_seconds=BACKOFF_SECONDS
        )


def _runtime_of(scaler: scaling.ScalerSpec, path: str) -> str:
    if scaler.runtime != "auto":
        return scaler.runtime
    return "podman" if "podman" in path else "docker"


def _engine_for(scaler: scaling.ScalerSpec, probes: Sequence[str], cache: dict[str, Engine]) -> Engine:
    if scaler.host is not None:
        key = scaler.host
        if key not in cache:
            cache[key] = Engine(
                client=EngineClient(host=scaler.host), runtime=scaler.runtime, where=key, socket_path=None
            )
            log.info(f"Using the container engine at {scaler.host}", extra={"scaler": scaler.name})
        return cache[key]
    path = scaler.socket_path or next((p for p in probes if Path(p).is_socket()), None)
    if path is None:
        raise ScalerStartupError(NO_RUNTIME)
    if path not in cache:
        runtime = _runtime_of(scaler, path)
        cache[path] = Engine(client=EngineClient(socket_path=path), runtime=runtime, where=path, socket_path=path)
        log.info(f"Detected {runtime} at {path}", extra={"scaler": scaler.name})
    return cache[path]


async def prepare(
    config: scaling.ScalerConfig,
    *,
    env: Mapping[str, str],
    nft: NftRunner | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> Prepared:
    """Run the start-up checks and set up engines, the isolated network and the ``ip kici`` table.

    Raises:
        ScalerStartupError: the configuration is refused (with back-off), or a check failed (without).
    """
    check_config(config, which=which)
    prepared = Prepared(config=config)
    isolated = [s for s in config.scalers if s.network_isolation]
    try:
        if isolated:
            prepared.nft = nft or NftRunner()
            await check_nftables(prepared.nft)
        if len(isolated) < len(config.scalers):
            log.info(ISOLATION_DISABLED, extra={"scalers": [s.name for s in config.scalers if not s.network_isolation]})
        cache: dict[str, Engine] = {}
        for scaler in config.scalers:
            prepared.engines[scaler.name] = engine = _engine_for(scaler, probe_paths(env), cache)
            try:
                await engine.client.ping()
                if scaler.network_isolation:
                    await engine.client.ensure_network()
            except EngineError as exc:
                raise ScalerStartupError(
                    f"container engine at {engine.where} (scaler {scaler.name}): {exc.message}"
                ) from None
        if prepared.nft is not None:
            try:
                await prepared.nft.setup_table()
            except (OSError, errors.KiciError) as exc:
                raise ScalerStartupError(f"nftables setup failed: {exc}") from None
    except errors.ConfigError as exc:
        await prepared.aclose()
        if isinstance(exc, ScalerStartupError):
            raise
        raise ScalerStartupError(exc.message) from None
    return prepared


async def from_settings(config_path: str, config_dir: str | None, *, env: Mapping[str, str]) -> Prepared:
    """Load the configuration and run :func:`prepare`. A refusal with a back-off waits it out first, so a
    supervisor that restarts the orchestrator at once does not spin.

    Raises:
        ScalerConfigError: the files are invalid (exit 78).
        ScalerStartupError: a check failed (exit 1).
    """
    config = scaler_config.load_scaler_config(config_path, config_dir)
    try:
        return await prepare(config, env=env)
    except ScalerStartupError as exc:
        if exc.backoff_seconds > 0:
            log.error(exc.message)
            log.info(f"Exiting in {exc.backoff_seconds:g} s")
            await anyio.sleep(exc.backoff_seconds)
        raise
