"""Runtime configuration: the only place that reads the process environment.

``load_settings(environ, entry_point)`` resolves every variable of :mod:`kici_runtime.config.vars`
once, env first, then the YAML file (``--config`` / ``KICI_CONFIG`` / the default location), then
the built-in defaults, and refuses boot with a :class:`~kici_core.errors.ConfigError` naming the
variable (never a secret's value). Entry points call ``load_settings(os.environ, ...)`` through
:func:`from_process_env` and hand the resulting :class:`Settings` to the code that needs it.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

from kici_adapters.secrets import decode_master_key
from kici_core.retention import RetentionPolicy
from kici_runtime.config import source as config_source
from kici_runtime.config.source import DEFAULT_CONFIG_PATH, Reader, Secret, SettingsError, fail
from kici_runtime.config.vars import BY_NAME

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EntryPoint",
    "Mode",
    "Secret",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "decode_master_key",
    "from_process_env",
    "load_settings",
    "normalise_base_path",
]

Mode = Literal["platform", "hybrid", "independent"]
EntryPoint = Literal["server", "standalone"]
LogLevel = Literal["debug", "info", "warn", "error"]

GENERATE_KEY = 'python3 -c "import secrets; print(secrets.token_hex(32))"'
MISSING_KEY_MESSAGE = (
    "KICI_SECRET_KEY is required: it encrypts the webhook secrets and keys stored in the database; "
    f"generate one with `{GENERATE_KEY}` and set KICI_SECRET_KEY (or KICI_SECRET_KEY_FILE) to it"
)
EPHEMERAL_KEY_WARNING = (
    "KICI_SECRET_KEY is not set: KICI_DEV=true generated an ephemeral key for this run only; secrets stored "
    "now cannot be read after a restart (set KICI_SECRET_KEY to keep them)"
)
MISSING_DATABASE_MESSAGE = (
    "KICI_DATABASE_URL is required: set it to a postgresql:// URL "
    "(for local development, KICI_DATABASE_URL=embedded starts an embedded PostgreSQL)"
)

_ENTRY_MODES: dict[str, tuple[str, ...]] = {"server": ("platform", "hybrid"), "standalone": ("independent",)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSettings:
    """Several processes on one database: heartbeat cadence and when a silent process counts as dead."""

    heartbeat_interval_ms: int = 10_000
    instance_timeout_ms: int = 30_000


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSettings:
    """Object storage (§6.2). ``type`` ``None`` = filesystem logs under the data root, no cache."""

    type: Literal["s3", "filesystem"] | None
    bucket: str | None
    prefix: str
    region: str | None
    endpoint: str | None
    external_endpoint: str | None
    upload_endpoint: str | None
    force_path_style: bool | None
    log_bucket: str | None
    fs_path: str | None
    fs_base_url: str | None
    skip_sentinel_validation: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the orchestrator reads from its environment, validated and typed."""

    entry_point: EntryPoint
    mode: Mode
    host: str
    port: int
    base_path: str
    log_level: LogLevel
    environment: str
    dev: bool
    config_file: str | None
    database_url: Secret | None
    embedded_database: bool
    auto_migrate: bool
    secret_key: bytes = field(repr=False)
    secret_key_old: bytes | None = field(repr=False)
    secret_key_generated: bool
    bootstrap_admin_token: Secret | None
    pg_customer_secrets: bool
    platform_url: str | None
    platform_token: Secret | None
    replay_window_hours: int
    http_max_body_bytes: int
    http_header_timeout_ms: int
    http_body_timeout_ms: int
    webhook_unverified_rpm: int
    allow_local_sources: bool
    generic_webhook_max_body_bytes: int
    event_log_max_payload_bytes: int
    lockfile_max_bytes: int
    lockfile_cache_max: int
    lockfile_cache_ttl_ms: int
    webhook_public_url: str | None
    dashboard_url: str | None
    webhook_payload_dir: str | None
    skip_github_source_validation: bool
    github_api_url: str
    agent_auth: Literal["token", "none"]
    agent_token_ttl_ms: int
    agent_max_reconnect_delay_ms: int
    dispatch_ack_timeout_ms: int
    queue_max_depth: int
    queue_timeout_ms: int
    queue_backpressure_threshold: int
    job_heartbeat_interval_ms: int
    stale_detector_scan_interval_ms: int
    stale_detector_threshold_multiplier: float
    scaler_config_path: str | None
    scaler_config_dir: str | None
    orchestrator_url: str | None
    data_dir: str | None
    storage: StorageSettings
    instance_id: str | None
    build_commit: str
    processing_workers: int = 0
    max_runs_per_delivery: int = 100
    max_jobs_per_delivery: int = 1000
    processing_timeout_seconds: int = 60
    processing_restart_delay_ms: int = 1000
    dispatch_sweep_interval_ms: int = 10_000
    cluster: ClusterSettings = field(default_factory=lambda: ClusterSettings())
    retention: RetentionPolicy = field(default_factory=lambda: RetentionPolicy())
    retention_interval_ms: int = 600_000
    warnings: tuple[str, ...] = ()
    secret_texts: tuple[str, ...] = field(default=(), repr=False, compare=False)
    provenance: tuple[config_source.Resolved, ...] = field(default=(), repr=False, compare=False)

    @property
    def platform_enabled(self) -> bool:
        """True in platform and hybrid modes: the relay client runs."""
        return self.mode != "independent"

    @property
    def direct_webhooks_enabled(self) -> bool:
        """True in hybrid and independent modes: direct webhook routes accept deliveries."""
        return self.mode != "platform"

    def secret_values(self) -> tuple[str, ...]:
        """Every secret plaintext in these settings, for the log masker (``register_secret``)."""
        return self.secret_texts

    def describe(self) -> dict[str, str]:
        """Every orchestrator variable with its effective value for a boot log line; secrets masked."""
        out: dict[str, str] = {}
        for item in self.provenance:
            var = BY_NAME[item.name]
            if item.raw is None:
                shown = "(unset)"
            elif item.name == "KICI_DATABASE_URL":
                shown = _mask_url_password(item.raw)
            elif var.secret:
                shown = "***"
            else:
                shown = item.raw
            out[item.name] = shown if item.source == "default" else f"{shown} [{item.label}]"
        return out


def from_process_env(entry_point: EntryPoint, *, config_path: str | None = None) -> Settings:
    """Load settings from this process's environment (the project's only ``os.environ`` read)."""
    return load_settings(os.environ, entry_point, config_path=config_path)


def load_settings(
    environ: Mapping[str, str],
    entry_point: EntryPoint,
    *,
    config_path: str | None = None,
    default_config_path: str | None = DEFAULT_CONFIG_PATH,
) -> Settings:
    """Resolve and validate the orchestrator settings.

    Args:
        environ: the environment (``os.environ`` in production; a dict in tests).
        entry_point: ``server`` (platform/hybrid) or ``standalone`` (independent).
        config_path: a ``--config`` path; wins over ``KICI_CONFIG``. A missing file is fatal.
        default_config_path: read when no explicit file is named; skipped when absent.

    Raises:
        SettingsError: (a ``ConfigError``) unknown ``KICI_*`` variable, unreadable YAML, conflicting
            or wrong mode for this entry point, missing database/platform settings, or malformed
            values. The message names the variable and never contains a secret.
    """
    warnings: list[str] = []
    dev = environ.get("KICI_DEV") == "true"
    unknown = config_source.unknown_variables(environ)
    if unknown:
        message = config_source.unknown_variables_message(unknown)
        if not dev:
            raise SettingsError(message, tuple(unknown))
        warnings.append(message)

    explicit = config_path or environ.get("KICI_CONFIG") or None
    yaml_file = explicit or default_config_path
    yaml_values = config_source.read_yaml(yaml_file, explicit=bool(explicit)) if yaml_file else {}
    reader = Reader(environ, yaml_values, yaml_file if yaml_values else None)

    mode = _resolve_mode(environ, reader, entry_point)
    dev = bool(reader.flag("KICI_DEV"))
    secret_texts: list[str] = []

    base_path = _base_path(reader)
    database_url, embedded = _database(reader, dev, secret_texts)
    secret_key = _master_key(reader, "KICI_SECRET_KEY", "KICI_SECRET_KEY_FILE", secret_texts)
    secret_key_old = _master_key(reader, "KICI_SECRET_KEY_OLD", "KICI_SECRET_KEY_FILE_OLD", secret_texts)
    secret_key_generated = False
    if secret_key is None and not _key_configured(reader):
        if dev:
            secret_key, secret_key_generated = secrets.token_bytes(32), True
            secret_texts.append(secret_key.hex())  # handed to processing children; never logged
            warnings.append(EPHEMERAL_KEY_WARNING)
        else:
            reader.issues.append(MISSING_KEY_MESSAGE)
    platform_url, platform_token = _platform(reader, mode)
    agent_auth = reader.choice("KICI_AGENT_AUTH") or "token"
    if agent_auth == "none":
        warnings.append("KICI_AGENT_AUTH=none: agents connect without a token (local development only)")

    tokens = [reader.secret("KICI_BOOTSTRAP_ADMIN_TOKEN"), platform_token]
    secret_texts += [t.reveal() for t in tokens if t is not None]

    settings = Settings(
        entry_point=entry_point,
        mode=mode,
        host=reader.text("KICI_HOST") or "0.0.0.0",
        port=_int(reader, "KICI_PORT"),
        base_path=base_path,
        log_level=cast(LogLevel, reader.choice("KICI_LOG_LEVEL") or "info"),
        environment=reader.choice("NODE_ENV") or "development",
        dev=dev,
        config_file=yaml_file if yaml_values else None,
        database_url=database_url,
        embedded_database=embedded,
        auto_migrate=reader.text("KICI_AUTO_MIGRATE") != "false",
        secret_key=secret_key or b"",
        secret_key_old=secret_key_old,
        secret_key_generated=secret_key_generated,
        bootstrap_admin_token=tokens[0],
        pg_customer_secrets=reader.flag("KICI_PG_CUSTOMER_SECRETS") is not False,
        platform_url=platform_url,
        platform_token=platform_token,
        replay_window_hours=_int(reader, "KICI_ORCH_RECONNECT_REPLAY_WINDOW_HOURS"),
        http_max_body_bytes=_int(reader, "KICI_HTTP_MAX_BODY_BYTES"),
        http_header_timeout_ms=_int(reader, "KICI_HTTP_HEADER_TIMEOUT_MS"),
        http_body_timeout_ms=_int(reader, "KICI_HTTP_BODY_TIMEOUT_MS"),
        webhook_unverified_rpm=_int(reader, "KICI_WEBHOOK_UNVERIFIED_RPM"),
        allow_local_sources=dev or bool(reader.flag("KICI_ALLOW_LOCAL_SOURCES")),
        generic_webhook_max_body_bytes=_int(reader, "KICI_GENERIC_WEBHOOK_MAX_BODY_BYTES"),
        event_log_max_payload_bytes=_int(reader, "KICI_EVENT_LOG_MAX_PAYLOAD_BYTES"),
        lockfile_max_bytes=_int(reader, "KICI_LOCKFILE_MAX_BYTES"),
        lockfile_cache_max=_int(reader, "KICI_LOCKFILE_CACHE_MAX"),
        lockfile_cache_ttl_ms=_int(reader, "KICI_LOCKFILE_CACHE_TTL_MS"),
        webhook_public_url=reader.url("KICI_WEBHOOK_PUBLIC_URL", ("http", "https")),
        dashboard_url=reader.url("KICI_DASHBOARD_URL", ("http", "https")),
        webhook_payload_dir=reader.text("KICI_WEBHOOK_PAYLOAD_DIR"),
        skip_github_source_validation=bool(reader.flag("KICI_SKIP_GITHUB_SOURCE_VALIDATION")),
        github_api_url=(reader.url("GITHUB_API_URL", ("http", "https")) or "https://api.github.com").rstrip("/"),
        agent_auth=cast(Literal["token", "none"], agent_auth),
        agent_token_ttl_ms=_int(reader, "KICI_AGENT_TOKEN_TTL_MS"),
        agent_max_reconnect_delay_ms=_int(reader, "KICI_AGENT_MAX_RECONNECT_DELAY_MS"),
        dispatch_ack_timeout_ms=_int(reader, "KICI_DISPATCH_ACK_TIMEOUT_MS"),
        queue_max_depth=_int(reader, "KICI_QUEUE_MAX_DEPTH"),
        queue_timeout_ms=_int(reader, "KICI_QUEUE_TIMEOUT_MS"),
        queue_backpressure_threshold=_int(reader, "KICI_QUEUE_BACKPRESSURE_THRESHOLD"),
        job_heartbeat_interval_ms=_int(reader, "KICI_JOB_HEARTBEAT_INTERVAL_MS"),
        stale_detector_scan_interval_ms=_int(reader, "KICI_STALE_DETECTOR_SCAN_INTERVAL_MS"),
        stale_detector_threshold_multiplier=reader.number("KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER") or 2.0,
        scaler_config_path=reader.text("KICI_SCALER_CONFIG_PATH"),
        scaler_config_dir=reader.text("KICI_SCALER_CONFIG_DIR"),
        orchestrator_url=reader.url("KICI_ORCHESTRATOR_URL", ("ws", "wss", "http", "https")),
        data_dir=reader.text("KICI_DATA_DIR"),
        storage=_storage(reader),
        instance_id=reader.text("KICI_CLUSTER_INSTANCE_ID"),
        build_commit=reader.text("KICI_BUILD_COMMIT") or "unknown",
        processing_workers=_processing_workers(reader),
        max_runs_per_delivery=_int(reader, "KICI_MAX_RUNS_PER_DELIVERY"),
        max_jobs_per_delivery=_int(reader, "KICI_MAX_JOBS_PER_DELIVERY"),
        processing_timeout_seconds=_int(reader, "KICI_PROCESSING_TIMEOUT_SECONDS"),
        processing_restart_delay_ms=_int(reader, "KICI_PROCESSING_RESTART_DELAY_MS"),
        dispatch_sweep_interval_ms=_int(reader, "KICI_DISPATCH_SWEEP_INTERVAL_MS"),
        cluster=ClusterSettings(
            heartbeat_interval_ms=_int(reader, "KICI_CLUSTER_HEARTBEAT_INTERVAL_MS"),
            instance_timeout_ms=_int(reader, "KICI_CLUSTER_INSTANCE_TIMEOUT_MS"),
        ),
        retention=RetentionPolicy(
            payload_days=_int(reader, "KICI_RETENTION_PAYLOAD_DAYS"),
            log_days=_int(reader, "KICI_RETENTION_LOG_DAYS"),
            run_days=_int(reader, "KICI_RETENTION_RUN_DAYS"),
            event_log_days=_int(reader, "KICI_RETENTION_EVENT_LOG_DAYS"),
            batch_size=_int(reader, "KICI_RETENTION_BATCH_SIZE"),
        ),
        retention_interval_ms=_int(reader, "KICI_RETENTION_INTERVAL_MS"),
        warnings=tuple(warnings),
        secret_texts=tuple(dict.fromkeys(s for s in secret_texts if s)),
        provenance=(),
    )
    # Validated for the record (and the boot log) though nothing else reads them.
    reader.choice("KICI_LOG_FORMAT")
    reader.choice("KICI_CLUSTER_ROLE")
    reader.text("KICI_STORAGE_PATH")
    reader.text("KICI_CONFIG")
    if reader.issues:
        fail(reader.issues)
    provenance = tuple(reader.resolved[n] for n in sorted(reader.resolved) if "server" in BY_NAME[n].used_by)
    return dataclasses.replace(settings, provenance=provenance)


# --- pieces ------------------------------------------------------------------------------------


def _processing_workers(reader: Reader) -> int:
    """``KICI_PROCESSING_WORKERS``, or by default one child when the host has a second CPU for it."""
    value = reader.integer("KICI_PROCESSING_WORKERS")
    if value is not None:
        return value
    return 1 if (os.cpu_count() or 1) >= 2 else 0


def _int(reader: Reader, name: str) -> int:
    value = reader.integer(name)
    return value if value is not None else int(BY_NAME[name].default or 0)


def _resolve_mode(environ: Mapping[str, str], reader: Reader, entry_point: EntryPoint) -> Mode:
    candidates = [(n, environ[n]) for n in ("KICI_MODE", "KICI_INSTANCE_MODE") if environ.get(n)]
    if "instance.mode" in reader.yaml_values:
        value = config_source.yaml_text(reader.yaml_values["instance.mode"])
        candidates.append((f"instance.mode (in {reader.yaml_path})", value))
    for label, value in candidates[1:]:
        first_label, first_value = candidates[0]
        if value != first_value:
            fail([f"conflicting mode settings: {first_label}={first_value} vs {label}={value}"])
    got = reader.lookup("KICI_MODE")
    reader.resolved["KICI_MODE"] = got
    if got.raw not in ("platform", "hybrid", "independent"):
        fail([f"{got.label} must be one of platform, hybrid, independent, got {got.raw!r}"])
    mode = cast(Mode, got.raw)
    if mode not in _ENTRY_MODES[entry_point]:
        why = " (KICI_MODE is unset, so the mode defaults to platform)" if got.source == "default" else ""
        if entry_point == "server":
            fail(
                [
                    f"kici-server requires KICI_MODE=platform or KICI_MODE=hybrid, got {mode} from {got.label}; "
                    "run independent mode with kici-standalone"
                ]
            )
        fail(
            [
                f"kici-standalone requires KICI_MODE=independent, got {mode}{why}; "
                "run platform and hybrid modes with kici-server"
            ]
        )
    return mode


def normalise_base_path(value: str) -> str:
    """``KICI_BASE_PATH`` as a route prefix: leading ``/``, no trailing ``/``, ``""`` for the root.

    Raises:
        ValueError: the value is not a plain URL path (query, fragment, whitespace, ``..``).
    """
    text = value.strip()
    if any(ch in text for ch in "?#\\") or any(ch.isspace() for ch in text):
        raise ValueError("must be a URL path such as /orchestrator")
    segments = [s for s in text.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise ValueError("must not contain . or .. segments")
    return "".join(f"/{s}" for s in segments)


def _base_path(reader: Reader) -> str:
    got = reader.text("KICI_BASE_PATH") or "/"
    try:
        return normalise_base_path(got)
    except ValueError as exc:
        reader.issues.append(f"{reader.resolved['KICI_BASE_PATH'].label} {exc}, got {got[:60]!r}")
        return ""


def _database(reader: Reader, dev: bool, secrets: list[str]) -> tuple[Secret | None, bool]:
    url = reader.text("KICI_DATABASE_URL")
    label = reader.resolved["KICI_DATABASE_URL"].label
    if url == "embedded" or (url is None and dev):
        return None, True
    if url is None:
        reader.issues.append(MISSING_DATABASE_MESSAGE)
        return None, False
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("postgresql", "postgres") or not (parsed.hostname or parsed.path or parsed.query):
        reader.issues.append(f"{label} must be a postgresql:// or postgres:// URL (or `embedded`)")
        return None, False
    # The URL itself is not registered: the log masker hides any URL's password, and the rest is no secret.
    if parsed.password:
        secrets.append(parsed.password)
        secrets.append(urllib.parse.unquote(parsed.password))
    return Secret(value=url), False


def _key_configured(reader: Reader) -> bool:
    """True when a master key was given at all (a malformed one is reported by :func:`_master_key`)."""
    return bool(reader.text("KICI_SECRET_KEY") or reader.text("KICI_SECRET_KEY_FILE"))


def _master_key(reader: Reader, name: str, file_name: str, secrets: list[str]) -> bytes | None:
    text = reader.text(name)
    label = reader.resolved[name].label
    path = reader.text(file_name)
    if not text and path:
        label = f"{reader.resolved[file_name].label} ({path})"
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read().strip()
        except OSError as exc:
            reader.issues.append(f"{label} cannot be read: {exc.strerror or exc}")
            return None
        if not text:
            reader.issues.append(f"Key file at '{path}' is empty ({reader.resolved[file_name].label}).")
            return None
    if not text:
        return None
    secrets.append(text.strip())
    try:
        return decode_master_key(text)
    except ValueError as exc:
        reader.issues.append(f"{label} is malformed: {exc}")
        return None


def _platform(reader: Reader, mode: Mode) -> tuple[str | None, Secret | None]:
    if mode == "independent":
        return None, None  # set or not, independent mode never dials the relay
    url = reader.url("KICI_PLATFORM_URL", ("ws", "wss"))
    token = reader.secret("KICI_PLATFORM_TOKEN")
    if reader.text("KICI_PLATFORM_URL") is None:
        reader.issues.append("KICI_PLATFORM_URL is required when KICI_MODE is platform or hybrid")
    if token is None:
        reader.issues.append("KICI_PLATFORM_TOKEN is required when KICI_MODE is platform or hybrid")
    return url, token


def _storage(reader: Reader) -> StorageSettings:
    kind = reader.choice("KICI_STORAGE_TYPE")
    bucket = reader.text("KICI_STORAGE_BUCKET")
    fs_path = reader.text("KICI_STORAGE_FS_PATH")
    if kind == "s3" and not bucket:
        reader.issues.append("KICI_STORAGE_BUCKET is required when KICI_STORAGE_TYPE is s3")
    if kind == "filesystem":
        if not fs_path:
            reader.issues.append("KICI_STORAGE_FS_PATH is required when KICI_STORAGE_TYPE is filesystem")
        elif not os.path.isabs(fs_path):
            reader.issues.append("KICI_STORAGE_FS_PATH must be an absolute path")
    return StorageSettings(
        type=cast(Literal["s3", "filesystem"] | None, kind),
        bucket=bucket,
        prefix=reader.text("KICI_STORAGE_PREFIX") or "",
        region=reader.text("KICI_STORAGE_REGION"),
        endpoint=reader.url("KICI_STORAGE_ENDPOINT", ("http", "https")),
        external_endpoint=reader.url("KICI_STORAGE_EXTERNAL_ENDPOINT", ("http", "https")),
        upload_endpoint=reader.url("KICI_STORAGE_UPLOAD_ENDPOINT", ("http", "https")),
        force_path_style=reader.flag("KICI_STORAGE_FORCE_PATH_STYLE"),
        log_bucket=reader.text("KICI_STORAGE_LOG_BUCKET"),
        fs_path=fs_path,
        fs_base_url=reader.url("KICI_STORAGE_FS_BASE_URL", ("http", "https")),
        skip_sentinel_validation=bool(reader.flag("KICI_SKIP_S3_SENTINEL_VALIDATION")),
    )


def _mask_url_password(url: str) -> str:
    if url == "embedded":
        return url
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.rsplit("@", 1)[1]
    user = parsed.username or ""
    return urllib.parse.urlunsplit(parsed._replace(netloc=f"{user}:***@{netloc}"))
