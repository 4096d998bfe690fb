"""Configuration of the reference agent: environment variables and command-line overrides.

This module is the only place in the agent that reads ``os.environ``. Everything else receives an
:class:`AgentConfig` through its constructor.
"""

from __future__ import annotations

import hashlib
import os
import platform as platform_mod
import secrets
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kici_core.errors import ConfigError
from kici_runtime.version import VERSION

AGENT_VERSION = VERSION
"""Reported as ``agent.register.version``."""

PROTOCOL_VERSION = 1
RESERVED_LABEL_PREFIX = "kici:"
DEFAULT_MAX_LOG_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything the agent needs, resolved once at start-up.

    ``labels`` are the operator's labels only; the ``kici:os:*``/``kici:arch:*``/``kici:host:*``
    auto-labels are added by :func:`register_labels`. ``step_env`` is the environment steps inherit
    (the agent's own environment minus every ``KICI_*`` variable, so the agent token never leaks).
    """

    url: str
    token: str | None
    agent_id: str
    labels: tuple[str, ...]
    max_concurrency: int = 1
    work_dir: Path
    hostname: str
    platform: str
    arch: str
    step_env: Mapping[str, str] = field(default_factory=dict)
    heartbeat_interval_s: float = 30.0
    job_heartbeat_interval_s: float = 60.0
    grace_period_s: float = 10.0
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    log_batch_lines: int = 50
    log_flush_interval_s: float = 0.1
    reconnect_base_delay_s: float = 1.0
    reconnect_max_delay_s: float = 60.0
    handshake_timeout_s: float = 30.0
    buffer_limit: int = 5000
    drain_flush_timeout_s: float = 10.0
    single_job: bool = False
    """``KICI_SCALER_MANAGED=1`` (set by the auto-scaler): run one job, then exit."""


def normalise_url(raw: str) -> str:
    """Turn an orchestrator base URL into its agent WebSocket endpoint.

    ``http``/``https`` become ``ws``/``wss``; a path that does not already end in ``/ws`` gets
    ``/ws`` appended, so ``https://ci.example.com/orchestrator`` becomes
    ``wss://ci.example.com/orchestrator/ws``. Query strings and fragments are refused (the
    endpoint takes none).

    Raises:
        ConfigError: the URL is empty, has another scheme, no host, or a query.
    """
    text = raw.strip()
    if not text:
        raise ConfigError("KICI_ORCHESTRATOR_URL is required (e.g. ws://orchestrator:4000)")
    parts = urlsplit(text)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    scheme = schemes.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(f"KICI_ORCHESTRATOR_URL must be ws://, wss://, http:// or https://, got {raw!r}")
    if not parts.netloc:
        raise ConfigError(f"KICI_ORCHESTRATOR_URL has no host: {raw!r}")
    if parts.query or parts.fragment:
        raise ConfigError("KICI_ORCHESTRATOR_URL must not carry a query string or fragment")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path = f"{path}/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def parse_labels(raw: str | None) -> tuple[str, ...]:
    """Split a comma-separated label list, dropping blanks and duplicates (first wins).

    Raises:
        ConfigError: a label uses the reserved ``kici:`` prefix.
    """
    labels: list[str] = []
    for item in (raw or "").split(","):
        label = item.strip()
        if not label or label in labels:
            continue
        if label.startswith(RESERVED_LABEL_PREFIX):
            raise ConfigError(f"label {label!r} uses the reserved 'kici:' prefix; the agent adds those itself")
        labels.append(label)
    return tuple(labels)


def wire_platform(sys_platform: str) -> str:
    """Map ``sys.platform`` to the protocol's platform names (Node's ``os.platform()`` values)."""
    if sys_platform.startswith("linux"):
        return "linux"
    if sys_platform.startswith("freebsd"):
        return "freebsd"
    if sys_platform in ("win32", "cygwin"):
        return "win32"
    return sys_platform


def wire_arch(machine: str) -> str:
    """Map ``platform.machine()`` to the protocol's arch names (Node's ``os.arch()`` values)."""
    name = machine.lower()
    table = {
        "x86_64": "x64",
        "amd64": "x64",
        "aarch64": "arm64",
        "arm64": "arm64",
        "i386": "ia32",
        "i686": "ia32",
        "x86": "ia32",
        "ppc64le": "ppc64",
        "s390x": "s390x",
    }
    if name in table:
        return table[name]
    if name.startswith("armv"):
        return "arm"
    return name or "unknown"


def auto_labels(*, platform: str, arch: str, hostname: str) -> tuple[str, ...]:
    """The self-reported ``kici:`` labels the agent adds to its registration (spec §2.5)."""
    os_labels = {
        "linux": ["kici:os:linux"],
        "darwin": ["kici:os:macos", "kici:os:darwin"],
        "win32": ["kici:os:windows", "kici:os:win32"],
    }.get(platform, [f"kici:os:{platform}"])
    arch_labels = {"x64": ["kici:arch:x64", "kici:arch:amd64"]}.get(arch, [f"kici:arch:{arch}"])
    return (*os_labels, *arch_labels, f"kici:host:{hostname}")


def register_labels(config: AgentConfig) -> list[str]:
    """Operator labels followed by the auto-labels, as sent in ``agent.register``."""
    extra = auto_labels(platform=config.platform, arch=config.arch, hostname=config.hostname)
    return [*config.labels, *(label for label in extra if label not in config.labels)]


def default_agent_id(hostname: str, work_dir: str | None) -> str:
    """``<hostname>-<8 hex>``.

    With an explicit work directory the suffix is derived from the host name and that directory, so
    the id is stable across restarts (two agents on one host need distinct work directories anyway).
    Without one, the suffix is random per process, as upstream does.
    """
    if work_dir:
        digest = hashlib.sha256(f"{hostname}\0{Path(work_dir).resolve()}".encode()).hexdigest()[:8]
    else:
        digest = secrets.token_hex(4)
    return f"{hostname}-{digest}"


def _positive_int(name: str, raw: str | int | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
    return value


def load_config(
    *,
    env: Mapping[str, str] | None = None,
    url: str | None = None,
    token: str | None = None,
    agent_id: str | None = None,
    labels: str | None = None,
    max_concurrency: int | None = None,
    work_dir: str | None = None,
) -> AgentConfig:
    """Build the agent's configuration: explicit arguments (command-line flags) win over env vars.

    ``env`` defaults to ``os.environ``. A default work directory is created under the system temp dir.

    Raises:
        ConfigError: a value is missing or malformed.
    """
    source = os.environ if env is None else env
    hostname = socket.gethostname().split(".")[0] or "agent"
    work_raw = work_dir or source.get("KICI_AGENT_WORK_DIR") or None
    if work_raw:
        work_path = Path(work_raw).expanduser().resolve()
        work_path.mkdir(parents=True, exist_ok=True)
    else:
        work_path = Path(tempfile.mkdtemp(prefix="kici-agent-"))
    grace_raw = source.get("KICI_AGENT_GRACE_PERIOD_SECONDS") or "10"
    try:
        grace = float(grace_raw)
    except ValueError:
        raise ConfigError(f"KICI_AGENT_GRACE_PERIOD_SECONDS must be a number, got {grace_raw!r}") from None
    the_id = (agent_id or source.get("KICI_AGENT_ID") or "").strip() or default_agent_id(hostname, work_raw)
    return AgentConfig(
        url=normalise_url(url or source.get("KICI_ORCHESTRATOR_URL") or ""),
        token=(token or source.get("KICI_AGENT_TOKEN") or "").strip() or None,
        agent_id=the_id,
        labels=parse_labels(
            labels if labels is not None else source.get("KICI_AGENT_LABELS") or source.get("KICI_LABELS")
        ),
        max_concurrency=_positive_int(
            "KICI_AGENT_MAX_CONCURRENCY",
            max_concurrency if max_concurrency is not None else source.get("KICI_AGENT_MAX_CONCURRENCY"),
            1,
        ),
        work_dir=work_path,
        hostname=hostname,
        platform=wire_platform(sys.platform),
        arch=wire_arch(platform_mod.machine()),
        step_env={k: v for k, v in source.items() if not k.startswith("KICI_")},
        grace_period_s=max(grace, 0.0),
        job_heartbeat_interval_s=_positive_int(
            "KICI_JOB_HEARTBEAT_INTERVAL_MS", source.get("KICI_JOB_HEARTBEAT_INTERVAL_MS"), 60000
        )
        / 1000,
        max_log_bytes=_positive_int(
            "KICI_MAX_LOG_SIZE_BYTES", source.get("KICI_MAX_LOG_SIZE_BYTES"), DEFAULT_MAX_LOG_BYTES
        ),
        single_job=source.get("KICI_SCALER_MANAGED", "").strip().lower() in ("1", "true"),
    )
