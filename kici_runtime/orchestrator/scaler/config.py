"""Loading ``scalers.yaml`` and ``scalers.d/*.yaml`` into :class:`kici_core.scaling.ScalerConfig`.

The main file needs ``version: 1``; drop-in files (sorted by name) add ``scalers`` entries and may repeat
``version``. Every problem is reported with the file and the path of the bad field, e.g.
``/etc/kici/scalers.yaml: scalers[0].labelSets[1].image: Field required``; all problems of a file are
listed at once. Only ``type: container`` scalers are run; other types are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kici_core import errors, netrules, scaling

__all__ = ["ScalerConfigError", "load_scaler_config", "parse_memory"]

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ScalerConfigError(errors.ConfigError):
    """The scaler configuration is invalid; ``issues`` holds one line per problem."""

    def __init__(self, issues: Sequence[str]) -> None:
        self.issues = tuple(issues)
        text = (
            self.issues[0]
            if len(self.issues) == 1
            else "\n".join(["Scaler configuration is invalid:", *(f"  - {i}" for i in self.issues)])
        )
        super().__init__(text)


def parse_memory(value: str | int) -> int:
    """``"2g"`` / ``"512m"`` / ``"1024k"`` / ``"4096"`` / ``4096`` as bytes (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*", str(value).lower())
    if not match:
        raise ValueError(f"not a memory size: {value!r} (use e.g. 512m or 2g)")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError("must be positive")
    return size


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Limits(_Model):
    memory: str | int | None = None
    cpus: Annotated[float, Field(gt=0)] | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_memory(value)
        return value


class _Resources(_Model):
    memory: str | int | None = None
    cpus: Annotated[float, Field(gt=0)] | None = None
    requests: dict[str, Any] | None = None
    limits: _Limits | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_memory(value)
        return value


class _NetworkPolicy(_Model):
    allowlist: list[str] = []
    denyAll: bool = False

    @field_validator("allowlist")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                netrules.parse_cidr(entry)
            except errors.InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value


class _LabelSet(_Model):
    labels: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    image: Annotated[str, Field(min_length=1)]
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    volumes: list[str] = []
    containerSocket: bool = False
    env: dict[str, str] = {}
    resources: _Resources | None = None
    networkPolicy: _NetworkPolicy | None = None
    backpressureMode: Literal["pause", "drop"] | None = None

    @field_validator("labels")
    @classmethod
    def _no_reserved(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if v.startswith("kici:")]
        if bad:
            raise ValueError(f"labels must not use the reserved 'kici:' prefix: {', '.join(bad)}")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"not environment variable names: {', '.join(bad)}")
        return value


class _WarmPool(_Model):
    enabled: bool = False
    size: Annotated[int, Field(ge=0)] = 0
    idleTimeoutSeconds: Annotated[float, Field(gt=0)] = 300


class _Scaler(_Model):
    name: str
    type: Literal["container", "bare-metal", "firecracker"]
    maxAgents: Annotated[int, Field(ge=1)]
    runtime: Literal["docker", "podman", "auto"] = "auto"
    socketPath: str | None = None
    host: str | None = None
    orchestratorUrl: str | None = None
    extraHosts: list[str] = []
    networkIsolation: bool = True
    warmPool: _WarmPool | None = None
    mandatoryLabels: list[str] = []
    roles: list[str] | None = None
    labelSets: list[_LabelSet] = []

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
        return value

    @field_validator("orchestratorUrl")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(wss?|https?)://[^/\s?#]+", value):
            raise ValueError("must be a ws://, wss://, http:// or https:// URL")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|https?)://[^/\s]+", value):
            raise ValueError("must be tcp://host:port (or http(s)://host:port)")
        return value


class _Defaults(_Model):
    resources: _Resources | None = None


class _File(_Model):
    version: Literal[1] | None = None
    globalMaxAgents: Annotated[int, Field(ge=1)] | None = None
    defaults: _Defaults | None = None
    scalers: list[_Scaler] = []


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "literal[", "str", "int", "float", "bool")):
            out += f".{part}" if out else part
    return out or "(document)"


def _read(path: Path) -> _File:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScalerConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScalerConfigError([f"{path}: not valid YAML: {first}"]) from None
    if not isinstance(data, dict):
        raise ScalerConfigError([f"{path}: must be a YAML mapping with a 'scalers' list"])
    try:
        return _File.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            issues.append(f"{path}: {_path(tuple(err['loc']))}: {message}")
        raise ScalerConfigError(list(dict.fromkeys(issues))) from None


def _memory_cpus(res: _Resources | None) -> tuple[int | None, float | None]:
    if res is None:
        return None, None
    memory, cpus = res.memory, res.cpus
    if res.limits is not None:
        memory = res.limits.memory if res.limits.memory is not None else memory
        cpus = res.limits.cpus if res.limits.cpus is not None else cpus
    return (parse_memory(memory) if memory is not None else None), cpus


def _label_set(ls: _LabelSet, defaults: _Resources | None) -> scaling.LabelSet:
    memory, cpus = _memory_cpus(ls.resources)
    d_memory, d_cpus = _memory_cpus(defaults)
    memory = memory if memory is not None else d_memory
    cpus = cpus if cpus is not None else d_cpus
    policy = ls.networkPolicy or _NetworkPolicy()
    return scaling.LabelSet(
        labels=tuple(dict.fromkeys(ls.labels)),
        image=ls.image,
        pull_policy=ls.imagePullPolicy,
        volumes=tuple(ls.volumes),
        container_socket=ls.containerSocket,
        env=tuple(ls.env.items()),
        memory_bytes=memory,
        nano_cpus=int(cpus * 1e9) if cpus is not None else None,
        allowlist=tuple(netrules.parse_cidr(c) for c in policy.allowlist),
        deny_all=policy.denyAll,
        backpressure_mode=ls.backpressureMode,
    )


def load_scaler_config(path: str | Path, drop_in_dir: str | Path | None = None) -> scaling.ScalerConfig:
    """Read and validate the main file and the ``*.yaml`` files of ``drop_in_dir`` (default: ``scalers.d``
    next to the main file; absent is fine).

    Raises:
        ScalerConfigError: any file is unreadable or invalid, or scaler names repeat.
    """
    main = Path(path)
    files = [(main, _read(main))]
    if files[0][1].version is None:
        raise ScalerConfigError([f"{main}: version: Field required (must be 1)"])
    folder = Path(drop_in_dir) if drop_in_dir else main.parent / "scalers.d"
    if folder.is_dir():
        files += [(p, _read(p)) for p in sorted(folder.glob("*.yaml")) if p.is_file()]
    elif drop_in_dir:
        raise ScalerConfigError([f"{folder}: scaler drop-in directory does not exist"])
    head = files[0][1]
    defaults = head.defaults.resources if head.defaults else None
    issues: list[str] = []
    seen: dict[str, Path] = {}
    specs: list[scaling.ScalerSpec] = []
    for file, doc in files:
        for i, s in enumerate(doc.scalers):
            where = f"{file}: scalers[{i}]"
            if s.name in seen:
                issues.append(f"{where}.name: duplicate scaler name {s.name!r} (first in {seen[s.name]})")
                continue
            seen[s.name] = file
            if s.type != "container":
                issues.append(
                    f"{where}.type: {s.type!r} scalers are not supported; this orchestrator runs 'container' scalers"
                )
                continue
            if not s.labelSets:
                issues.append(f"{where}.labelSets: a container scaler needs at least one label set")
                continue
            pool = s.warmPool or _WarmPool()
            specs.append(
                scaling.ScalerSpec(
                    name=s.name,
                    max_agents=s.maxAgents,
                    runtime=s.runtime,
                    socket_path=s.socketPath,
                    host=s.host,
                    orchestrator_url=s.orchestratorUrl,
                    extra_hosts=tuple(s.extraHosts),
                    network_isolation=s.networkIsolation,
                    warm_pool=scaling.WarmPool(
                        size=pool.size if pool.enabled else 0, idle_timeout=pool.idleTimeoutSeconds
                    ),
                    mandatory_labels=tuple(s.mandatoryLabels),
                    roles=tuple(s.roles or ()),
                    source=str(file),
                    label_sets=tuple(_label_set(ls, defaults) for ls in s.labelSets),
                )
            )
    if issues:
        raise ScalerConfigError(issues)
    return scaling.ScalerConfig(global_max_agents=head.globalMaxAgents or 50, scalers=tuple(specs))
