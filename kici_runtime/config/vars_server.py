"""Variables of the serving process itself: mode, listener and routing, logging, database, secrets, Platform relay."""

from __future__ import annotations

from kici_runtime.config import var

_MODES = ("platform", "hybrid", "independent")
_LEVELS = ("debug", "info", "warn", "error")

VARIABLES: tuple[var.Var, ...] = (
    # mode, listener, routing
    var.row(
        "KICI_MODE",
        "enum",
        "platform",
        "core",
        "Operating mode. kici-server runs platform/hybrid, kici-standalone runs independent.",
        choices=_MODES,
        yaml="instance.mode",
    ),
    var.row(
        "KICI_INSTANCE_MODE",
        "enum",
        None,
        "core",
        "Alias of KICI_MODE (env form of instance.mode); boot is refused when it disagrees with KICI_MODE or "
        "instance.mode.",
        choices=_MODES,
        alias_of="KICI_MODE",
    ),
    var.row(
        "KICI_PORT",
        "int",
        "4000",
        "core",
        "Port of the single HTTP/WebSocket listener (0 picks a free port).",
        minimum=0,
        maximum=65535,
        yaml="server.port",
    ),
    var.row(
        "KICI_SERVER_PORT",
        "int",
        None,
        "core",
        "Alias of KICI_PORT.",
        minimum=0,
        maximum=65535,
        alias_of="KICI_PORT",
    ),
    var.row(
        "KICI_HOST",
        "str",
        "0.0.0.0",
        "core",
        "Interface the listener binds to (all interfaces by default).",
        yaml="server.host",
    ),
    var.row(
        "KICI_BASE_PATH",
        "str",
        "/",
        "core",
        "URL prefix for every route, e.g. /orchestrator; routes are also served without it (for proxies that strip the "
        "prefix).",
        yaml="server.basePath",
    ),
    var.row(
        "KICI_SERVER_BASE_PATH",
        "str",
        None,
        "core",
        "Alias of KICI_BASE_PATH.",
        alias_of="KICI_BASE_PATH",
    ),
    var.row(
        "KICI_CONFIG",
        "path",
        None,
        "core",
        "YAML configuration file; a missing or invalid file refuses boot. Without it /etc/kici/orchestrator.yaml is "
        "read when present.",
    ),
    var.row(
        "KICI_DEV",
        "bool",
        "false",
        "core",
        "Development mode: unknown KICI_* variables only warn, a missing KICI_DATABASE_URL starts an embedded "
        "PostgreSQL, and a missing KICI_SECRET_KEY is replaced by an ephemeral key (with a warning).",
    ),
    var.row(
        "NODE_ENV",
        "enum",
        "development",
        "core",
        "Informational; reported as the `environment` log field.",
        choices=("development", "production", "test"),
    ),
    var.row(
        "KICI_NODE_ENV",
        "enum",
        None,
        "core",
        "Alias of NODE_ENV.",
        choices=("development", "production", "test"),
        alias_of="NODE_ENV",
    ),
    # logging
    var.row(
        "KICI_LOG_LEVEL",
        "enum",
        "info",
        "core",
        "Log threshold of the JSON log lines on stdout.",
        choices=_LEVELS,
        yaml="server.logLevel",
    ),
    var.row(
        "KICI_SERVER_LOG_LEVEL",
        "enum",
        None,
        "core",
        "Alias of KICI_LOG_LEVEL.",
        choices=_LEVELS,
        alias_of="KICI_LOG_LEVEL",
    ),
    var.row(
        "KICI_LOG_FORMAT",
        "enum",
        "auto",
        "core",
        "Accepted for compatibility; the server entry points always log JSON.",
        choices=("auto", "plain", "json"),
    ),
    # database
    var.row(
        "KICI_DATABASE_URL",
        "url",
        None,
        "core",
        "PostgreSQL URL (postgresql:// or postgres://). Required; the value `embedded` (or leaving it unset with "
        "KICI_DEV=true) starts an embedded PostgreSQL for development.",
        secret=True,
        yaml="database.url",
    ),
    var.row(
        "KICI_AUTO_MIGRATE",
        "str",
        "true",
        "core",
        "Any value other than the literal `false` applies pending migrations at boot.",
    ),
    # secrets
    var.row(
        "KICI_SECRET_KEY",
        "str",
        None,
        "core",
        "Master key for secrets at rest: 64 hex characters or base64 of exactly 32 bytes. Required in every mode (boot "
        'is refused without it); generate one with `python3 -c "import secrets; print(secrets.token_hex(32))"`. With '
        "KICI_DEV=true a missing key is replaced by an ephemeral one for that run.",
        secret=True,
        yaml="secrets.key",
    ),
    var.row(
        "KICI_SECRET_KEY_FILE",
        "path",
        None,
        "core",
        "File holding the master key (trimmed); KICI_SECRET_KEY wins when both are set.",
        yaml="secrets.keyFile",
    ),
    var.row(
        "KICI_SECRET_KEY_OLD",
        "str",
        None,
        "core",
        "Previous master key, during key rotation.",
        secret=True,
    ),
    var.row(
        "KICI_SECRET_KEY_FILE_OLD",
        "path",
        None,
        "core",
        "File form of KICI_SECRET_KEY_OLD.",
    ),
    var.row(
        "KICI_BOOTSTRAP_ADMIN_TOKEN",
        "str",
        None,
        "core",
        "Plaintext of the `bootstrap` owner admin token, upserted (hashed) at boot.",
        secret=True,
        yaml="secrets.bootstrapAdminToken",
    ),
    var.row(
        "KICI_PG_CUSTOMER_SECRETS",
        "bool",
        "true",
        "core",
        "When false only internal secret scopes (__source__/…, __webhook__/…) may be written.",
        yaml="pgCustomerSecrets",
    ),
    # platform relay
    var.row(
        "KICI_PLATFORM_URL",
        "url",
        None,
        "core",
        "Platform relay WebSocket URL (ws:// or wss://). Required in platform and hybrid modes; ignored in independent "
        "mode.",
        yaml="platform.url",
        used_by=var.SERVER,
        modes="platform, hybrid",
    ),
    var.row(
        "KICI_PLATFORM_TOKEN",
        "str",
        None,
        "core",
        "Orchestrator API key presented to the relay. Required in platform and hybrid modes.",
        secret=True,
        yaml="platform.token",
        used_by=var.SERVER,
        modes="platform, hybrid",
    ),
    var.row(
        "KICI_ORCH_RECONNECT_REPLAY_WINDOW_HOURS",
        "int",
        "24",
        "extended",
        "Terminal runs finished within this many hours are replayed to the Platform after a reconnect.",
        minimum=0,
        used_by=var.SERVER,
        modes="platform, hybrid",
    ),
)
