"""The declarative table of every environment variable the project reads or accepts.

``VARIABLES`` is the single source of truth: :mod:`kici_runtime.config.settings` reads values through it,
the unknown-``KICI_*`` guard takes its known names from it, and ``docs/configuration.md`` is
generated from it (``tools/gen_config_docs.py``).

``ACCEPTED_NAMES`` / ``ACCEPTED_PREFIXES`` list upstream variables that are tolerated by the guard
(so deployments that still set them boot) but have no effect here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["str", "int", "float", "bool", "enum", "path", "url"]
Tier = Literal["core", "extended"]
Consumer = Literal["server", "standalone", "agent", "admin"]

ORCH: tuple[Consumer, ...] = ("server", "standalone")
SERVER: tuple[Consumer, ...] = ("server",)
AGENT: tuple[Consumer, ...] = ("agent",)
ADMIN: tuple[Consumer, ...] = ("admin",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Var:
    """One environment variable.

    ``default`` is the textual default (``None`` = unset). ``alias_of`` names the primary variable
    this one is an alias for; the primary wins when both are set. ``yaml`` is the dotted key of the
    YAML file (§1.2) that supplies the value when no env var is set. ``modes`` says in which
    operating modes the variable matters (free text for the docs).
    """

    name: str
    kind: Kind
    default: str | None
    tier: Tier
    description: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    yaml: str | None = None
    alias_of: str | None = None
    used_by: tuple[Consumer, ...] = ORCH
    modes: str = "all"


_MODES = ("platform", "hybrid", "independent")
_LEVELS = ("debug", "info", "warn", "error")
_BOOL = ("true", "false")


def _v(name: str, kind: Kind, default: str | None, tier: Tier, description: str, **kw: object) -> Var:
    if kind == "bool" and "choices" not in kw:
        kw["choices"] = _BOOL
    return Var(name=name, kind=kind, default=default, tier=tier, description=description, **kw)  # type: ignore[arg-type]


VARIABLES: tuple[Var, ...] = (
    # --- mode, listener, routing -------------------------------------------------------------
    _v("KICI_MODE", "enum", "platform", "core", "Operating mode. kici-server runs platform/hybrid, kici-standalone runs independent.", choices=_MODES, yaml="instance.mode"),
    _v("KICI_INSTANCE_MODE", "enum", None, "core", "Alias of KICI_MODE (env form of instance.mode); boot is refused when it disagrees with KICI_MODE or instance.mode.", choices=_MODES, alias_of="KICI_MODE"),
    _v("KICI_PORT", "int", "4000", "core", "Port of the single HTTP/WebSocket listener (0 picks a free port).", minimum=0, maximum=65535, yaml="server.port"),
    _v("KICI_SERVER_PORT", "int", None, "core", "Alias of KICI_PORT.", minimum=0, maximum=65535, alias_of="KICI_PORT"),
    _v("KICI_HOST", "str", "0.0.0.0", "core", "Interface the listener binds to (all interfaces by default).", yaml="server.host"),
    _v("KICI_BASE_PATH", "str", "/", "core", "URL prefix for every route, e.g. /orchestrator; routes are also served without it (for proxies that strip the prefix).", yaml="server.basePath"),
    _v("KICI_SERVER_BASE_PATH", "str", None, "core", "Alias of KICI_BASE_PATH.", alias_of="KICI_BASE_PATH"),
    _v("KICI_CONFIG", "path", None, "core", "YAML configuration file; a missing or invalid file refuses boot. Without it /etc/kici/orchestrator.yaml is read when present."),
    _v("KICI_DEV", "bool", "false", "core", "Development mode: unknown KICI_* variables only warn, a missing KICI_DATABASE_URL starts an embedded PostgreSQL, and a missing KICI_SECRET_KEY is replaced by an ephemeral key (with a warning)."),
    _v("NODE_ENV", "enum", "development", "core", "Informational; reported as the `environment` log field.", choices=("development", "production", "test")),
    _v("KICI_NODE_ENV", "enum", None, "core", "Alias of NODE_ENV.", choices=("development", "production", "test"), alias_of="NODE_ENV"),
    # --- logging ------------------------------------------------------------------------------
    _v("KICI_LOG_LEVEL", "enum", "info", "core", "Log threshold of the JSON log lines on stdout.", choices=_LEVELS, yaml="server.logLevel"),
    _v("KICI_SERVER_LOG_LEVEL", "enum", None, "core", "Alias of KICI_LOG_LEVEL.", choices=_LEVELS, alias_of="KICI_LOG_LEVEL"),
    _v("KICI_LOG_FORMAT", "enum", "auto", "core", "Accepted for compatibility; the server entry points always log JSON.", choices=("auto", "plain", "json")),
    # --- database -----------------------------------------------------------------------------
    _v("KICI_DATABASE_URL", "url", None, "core", "PostgreSQL URL (postgresql:// or postgres://). Required; the value `embedded` (or leaving it unset with KICI_DEV=true) starts an embedded PostgreSQL for development.", secret=True, yaml="database.url"),
    _v("KICI_AUTO_MIGRATE", "str", "true", "core", "Any value other than the literal `false` applies pending migrations at boot."),
    # --- secrets ------------------------------------------------------------------------------
    _v("KICI_SECRET_KEY", "str", None, "core", "Master key for secrets at rest: 64 hex characters or base64 of exactly 32 bytes. Required in every mode (boot is refused without it); generate one with `python3 -c \"import secrets; print(secrets.token_hex(32))\"`. With KICI_DEV=true a missing key is replaced by an ephemeral one for that run.", secret=True, yaml="secrets.key"),
    _v("KICI_SECRET_KEY_FILE", "path", None, "core", "File holding the master key (trimmed); KICI_SECRET_KEY wins when both are set.", yaml="secrets.keyFile"),
    _v("KICI_SECRET_KEY_OLD", "str", None, "core", "Previous master key, during key rotation.", secret=True),
    _v("KICI_SECRET_KEY_FILE_OLD", "path", None, "core", "File form of KICI_SECRET_KEY_OLD."),
    _v("KICI_BOOTSTRAP_ADMIN_TOKEN", "str", None, "core", "Plaintext of the `bootstrap` owner admin token, upserted (hashed) at boot.", secret=True, yaml="secrets.bootstrapAdminToken"),
    _v("KICI_PG_CUSTOMER_SECRETS", "bool", "true", "core", "When false only internal secret scopes (__source__/…, __webhook__/…) may be written.", yaml="pgCustomerSecrets"),
    # --- platform relay -----------------------------------------------------------------------
    _v("KICI_PLATFORM_URL", "url", None, "core", "Platform relay WebSocket URL (ws:// or wss://). Required in platform and hybrid modes; ignored in independent mode.", yaml="platform.url", used_by=SERVER, modes="platform, hybrid"),
    _v("KICI_PLATFORM_TOKEN", "str", None, "core", "Orchestrator API key presented to the relay. Required in platform and hybrid modes.", secret=True, yaml="platform.token", used_by=SERVER, modes="platform, hybrid"),
    _v("KICI_ORCH_RECONNECT_REPLAY_WINDOW_HOURS", "int", "24", "extended", "Terminal runs finished within this many hours are replayed to the Platform after a reconnect.", minimum=0, used_by=SERVER, modes="platform, hybrid"),
    # --- webhooks, GitHub, limits -------------------------------------------------------------
    _v("KICI_HTTP_MAX_BODY_BYTES", "int", "26214400", "core", "Request-body limit for every route (413 beyond it).", minimum=1),
    _v("KICI_HTTP_HEADER_TIMEOUT_MS", "int", "10000", "core", "Time a client has to send a request's headers, from connecting (or from the first byte of the next request on a kept-alive connection); slower connections are closed (408).", minimum=100),
    _v("KICI_HTTP_BODY_TIMEOUT_MS", "int", "60000", "core", "Time a client has to send a request's whole body once its headers arrived; slower requests are answered 408 and closed.", minimum=100),
    _v("KICI_WEBHOOK_UNVERIFIED_RPM", "int", "60", "core", "Webhook requests per minute per client address that fail verification (unknown source or bad signature) before they are answered 429; verified deliveries count only against their source's limit.", minimum=1, modes="hybrid, independent"),
    _v("KICI_ALLOW_LOCAL_SOURCES", "bool", "false", "core", "Serve `local` webhook sources (repositories on this machine) outside development; they are always served with KICI_DEV=true.", modes="hybrid, independent"),
    _v("KICI_GENERIC_WEBHOOK_MAX_BODY_BYTES", "int", "10485760", "core", "Body limit of POST /webhook/<orgId>/generic/<sourceId>, checked before the per-source limit.", minimum=1, modes="hybrid, independent"),
    _v("KICI_EVENT_LOG_MAX_PAYLOAD_BYTES", "int", "5242880", "core", "Largest webhook body stored in object storage; larger payloads are recorded as omitted.", minimum=0, yaml="eventLog.maxPayloadBytes"),
    _v("KICI_LOCKFILE_MAX_BYTES", "int", "5242880", "core", "Largest .kici/kici.lock.json accepted; larger files are treated as corrupt.", minimum=1),
    _v("KICI_LOCKFILE_CACHE_MAX", "int", "500", "core", "Entries in the lock-file cache.", minimum=0, yaml="lockfileCache.max"),
    _v("KICI_LOCKFILE_CACHE_TTL_MS", "int", "3600000", "core", "Lock-file cache TTL for full-SHA refs (branch refs are cached at most 60 s).", minimum=0, yaml="lockfileCache.ttlMs"),
    _v("KICI_MAX_RUNS_PER_DELIVERY", "int", "100", "core", "Runs one delivery may create (one per matched workflow); a delivery matching more workflows is recorded as failed with the reason and creates none.", minimum=1),
    _v("KICI_MAX_JOBS_PER_DELIVERY", "int", "1000", "core", "Jobs (matrix children included) the runs of one delivery may have; a delivery needing more is recorded as failed with the reason and creates no run.", minimum=1),
    _v("KICI_PROCESSING_TIMEOUT_SECONDS", "int", "60", "core", "Time budget of one delivery's trigger matching and planning. A delivery past it is retried; one that crashes or runs out of time 3 times is parked as failed (replayable).", minimum=1),
    _v("KICI_WEBHOOK_PUBLIC_URL", "url", None, "core", "Public base URL used when printing a source's webhook URL."),
    _v("KICI_DASHBOARD_URL", "url", None, "extended", "Base URL of a dashboard showing runs: GitHub check runs link to <url>/r/orgs/<orgId>/runs/<runId> (details_url). Unset: check runs carry no link.", modes="hybrid, independent"),
    _v("KICI_WEBHOOK_PAYLOAD_DIR", "path", None, "core", "Optional on-disk payload archive; also moves the filesystem log root to <dir>/logs.", yaml="webhookPayloadDir"),
    _v("KICI_SKIP_GITHUB_SOURCE_VALIDATION", "bool", "false", "core", "GitHub sources are checked against GitHub (`GET /app`) only when `source add github --verify` asks for it; when true, such requests are refused, so the admin API never calls GitHub."),
    _v("GITHUB_API_URL", "url", "https://api.github.com", "core", "GitHub REST API base URL (set it for GitHub Enterprise Server or a local test server)."),
    # --- dispatch and agents ------------------------------------------------------------------
    _v("KICI_AGENT_AUTH", "enum", "token", "core", "Agent WebSocket authentication; `none` (local development only) logs a warning.", choices=("token", "none"), yaml="agentAuth"),
    _v("KICI_AGENT_TOKEN_TTL_MS", "int", "3600000", "core", "TTL of ephemeral (scaler-minted) agent tokens.", minimum=1, yaml="agentTokenTtlMs"),
    _v("KICI_AGENT_MAX_RECONNECT_DELAY_MS", "int", "60000", "core", "How long in-flight jobs wait for a disconnected agent before failing.", minimum=0),
    _v("KICI_PROCESSING_WORKERS", "int", None, "core", "Child processes that process accepted deliveries (matching, runs, payload offload) so the serving process keeps its event loop for webhook intake and agent dispatch; 0 processes them in the serving process. Unset: 1 on a host with two or more CPUs, else 0. Children are restarted with backoff when they die and stopped before the serving process exits.", minimum=0, maximum=64),
    _v("KICI_DISPATCH_ACK_TIMEOUT_MS", "int", "10000", "core", "Wait for job.ack/job.reject after job.dispatch before requeueing.", minimum=1000),
    _v("KICI_QUEUE_MAX_DEPTH", "int", "1000", "core", "Queued jobs before enqueue is refused.", minimum=1, yaml="queue.maxDepth"),
    _v("KICI_QUEUE_TIMEOUT_MS", "int", "3600000", "core", "How long a queued job may wait; 0 = forever.", minimum=0, yaml="queue.timeoutMs"),
    _v("KICI_QUEUE_BACKPRESSURE_THRESHOLD", "int", "100", "core", "Sustained pending depth that logs queue.backpressure.sustained; 0 disables.", minimum=0, yaml="queue.backpressureThreshold"),
    _v("KICI_JOB_HEARTBEAT_INTERVAL_MS", "int", "60000", "core", "Expected job heartbeat cadence.", minimum=1, yaml="staleDetector.heartbeatIntervalMs", used_by=("server", "standalone", "agent")),
    _v("KICI_STALE_DETECTOR_SCAN_INTERVAL_MS", "int", "60000", "core", "Stale-run scan cadence.", minimum=1, yaml="staleDetector.scanIntervalMs"),
    _v("KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER", "float", "2", "core", "A job is stale after multiplier × heartbeat interval.", minimum=1, yaml="staleDetector.thresholdMultiplier"),
    _v("KICI_SCALER_CONFIG_PATH", "path", None, "core", "scalers.yaml; enables the container auto-scaler (and its NET_ADMIN/nftables check).", yaml="scaler.configPath"),
    _v("KICI_SCALER_CONFIG_DIR", "path", None, "core", "scalers.d/ drop-in directory.", yaml="scaler.configDir"),
    _v("KICI_ORCHESTRATOR_URL", "url", None, "core", "Orchestrator WebSocket URL agents connect to: kici-agent's target (it also accepts http(s):// and appends /ws), and the URL the scaler gives spawned agents (default ws://127.0.0.1:<KICI_PORT>/ws).", used_by=("server", "standalone", "agent")),
    # --- storage ------------------------------------------------------------------------------
    _v("KICI_DATA_DIR", "path", None, "core", "Data root; default /var/lib/kici when writable, else the user state directory, else a temp directory."),
    _v("KICI_STORAGE_TYPE", "enum", None, "core", "Object storage backend: s3 or filesystem; unset = filesystem logs under the data root, cache disabled.", choices=("s3", "filesystem"), yaml="storage.type"),
    _v("KICI_STORAGE_BUCKET", "str", None, "core", "Cache bucket (required for s3).", yaml="storage.bucket"),
    _v("KICI_STORAGE_PREFIX", "str", "", "core", "Key prefix for cache objects and the cluster sentinel.", yaml="storage.prefix"),
    _v("KICI_STORAGE_REGION", "str", None, "core", "S3 region (also needed for MinIO/SeaweedFS).", yaml="storage.region"),
    _v("KICI_STORAGE_ENDPOINT", "url", None, "core", "S3 endpoint used by the orchestrator (AWS default when unset).", yaml="storage.endpoint"),
    _v("KICI_STORAGE_EXTERNAL_ENDPOINT", "url", None, "core", "S3 endpoint signed into agent-facing URLs (falls back to KICI_STORAGE_ENDPOINT).", yaml="storage.externalEndpoint"),
    _v("KICI_STORAGE_UPLOAD_ENDPOINT", "url", None, "core", "S3 endpoint signed into host-CLI upload URLs (falls back to KICI_STORAGE_ENDPOINT)."),
    _v("KICI_STORAGE_FORCE_PATH_STYLE", "bool", None, "core", "Path-style S3 addressing (SDK default when unset).", yaml="storage.forcePathStyle"),
    _v("KICI_STORAGE_LOG_BUCKET", "str", None, "core", "Separate bucket for logs and event-log payloads (defaults to the cache bucket).", yaml="storage.logBucket"),
    _v("KICI_STORAGE_FS_PATH", "path", None, "core", "Absolute cache directory (required for filesystem)."),
    _v("KICI_STORAGE_FS_BASE_URL", "url", None, "core", "Agent-reachable base URL for filesystem blob links (default http://127.0.0.1:<KICI_PORT>)."),
    _v("KICI_STORAGE_PATH", "path", None, "core", "Legacy; accepted and ignored."),
    _v("KICI_SKIP_S3_SENTINEL_VALIDATION", "bool", "false", "extended", "When true, skip the cluster-id sentinel check in the S3 bucket."),
    # --- several processes on one database, retention --------------------------------------
    _v("KICI_CLUSTER_HEARTBEAT_INTERVAL_MS", "int", "10000", "core", "How often each orchestrator process records its heartbeat (and the load of its agents) in the database.", minimum=100),
    _v("KICI_CLUSTER_INSTANCE_TIMEOUT_MS", "int", "30000", "core", "A process whose heartbeat is older than this is dead: another process recovers the jobs its agents were running (they fail after the agents' recovery window unless the agents reconnect to another process and reclaim them).", minimum=300),
    _v("KICI_RETENTION_PAYLOAD_DAYS", "int", "30", "core", "Days a delivery's payload object (and its runs' payload copies) is kept after it arrived, once the delivery and its runs are finished; 0 keeps payloads forever.", minimum=0),
    _v("KICI_RETENTION_LOG_DAYS", "int", "30", "core", "Days job logs are kept after their run finished; 0 keeps logs forever.", minimum=0),
    _v("KICI_RETENTION_RUN_DAYS", "int", "90", "core", "Days a finished run (with its jobs, steps, logs and delivered check runs) is kept after it finished; 0 keeps runs forever.", minimum=0),
    _v("KICI_RETENTION_EVENT_LOG_DAYS", "int", "90", "core", "Days an event-log row is kept after the delivery arrived, once it and its runs are finished; it is also the dedup record, so a redelivery older than this is processed again. 0 keeps the event log forever.", minimum=0),
    _v("KICI_RETENTION_INTERVAL_MS", "int", "600000", "core", "How often the retention sweeper runs (one process at a time, under an advisory lock).", minimum=1000),
    _v("KICI_RETENTION_BATCH_SIZE", "int", "500", "core", "Rows the retention sweeper deletes per transaction.", minimum=1, maximum=10000),
    # --- identity -----------------------------------------------------------------------------
    _v("KICI_CLUSTER_INSTANCE_ID", "str", None, "core", "Stable instance id (default: a fresh id per boot); also a log field.", yaml="instance.id"),
    _v("KICI_INSTANCE_ID", "str", None, "core", "Alias of KICI_CLUSTER_INSTANCE_ID.", alias_of="KICI_CLUSTER_INSTANCE_ID"),
    _v("KICI_CLUSTER_ROLE", "enum", "coordinator", "extended", "Cluster role; only `coordinator` is supported (worker processes are not implemented).", choices=("coordinator",)),
    _v("KICI_BUILD_COMMIT", "str", "unknown", "core", "Build commit baked into the image; reported by /health."),
    # --- kici-agent ---------------------------------------------------------------------------
    _v("KICI_AGENT_TOKEN", "str", None, "core", "Agent token (kat_…) presented on connect; omit when the orchestrator runs KICI_AGENT_AUTH=none.", secret=True, used_by=AGENT),
    _v("KICI_AGENT_LABELS", "str", "", "core", "Comma-separated agent labels; labels may not start with `kici:` (the agent adds those itself).", used_by=AGENT),
    _v("KICI_AGENT_MAX_CONCURRENCY", "int", "1", "core", "Jobs the agent runs at once.", minimum=1, used_by=AGENT),
    _v("KICI_AGENT_ID", "str", None, "core", "Agent id; derived from the host name and work directory when unset.", used_by=AGENT),
    _v("KICI_AGENT_WORK_DIR", "path", None, "core", "Directory for job checkouts (default: a fresh temporary directory).", used_by=AGENT),
    _v("KICI_AGENT_GRACE_PERIOD_SECONDS", "float", "10", "core", "On shutdown, how long running steps get before they are killed.", minimum=0, used_by=AGENT),
    _v("KICI_MAX_LOG_SIZE_BYTES", "int", "10485760", "core", "Per-step log cap; beyond it one truncation marker is sent.", minimum=1, used_by=AGENT),
    # --- kici-admin ---------------------------------------------------------------------------
    _v("KICI_ADMIN_URL", "url", "http://localhost:4000", "core", "kici-admin --url default (include any KICI_BASE_PATH).", used_by=ADMIN),
    _v("KICI_ADMIN_TOKEN", "str", None, "core", "kici-admin --token default.", secret=True, used_by=ADMIN),
)

BY_NAME: dict[str, Var] = {v.name: v for v in VARIABLES}

#: Upstream variables tolerated by the unknown-KICI_* guard that have no effect here.
ACCEPTED_NAMES: tuple[str, ...] = (
    "KICI_CACHE",
    "KICI_RELAY_DB",  # read by kici-relay (a development tool), ignored by the orchestrator
    "KICI_LOG_DIR",
    "KICI_LOG_MAX_SIZE",
    "KICI_LOG_RETENTION_DAYS",
    "KICI_PLATFORM_INSTANCE_ID",
    "KICI_SERVER_TLS_CERT_PATH",
    "KICI_PROVENANCE_ISSUER",
    "KICI_WORKER_CONCURRENCY",
    "KICI_CONCURRENCY_WAIT_TIMEOUT_MS",
    "KICI_CACHE_TTL_DAYS",
    "KICI_CACHE_BUILD_TIMEOUT_MS",
    "KICI_CACHE_MAX_TARBALL_BYTES",
    "KICI_USER_CACHE_QUOTA_BYTES",
    "KICI_USER_CACHE_TTL_MS",
    "KICI_GITHUB_APP_NAME_REFRESH_INTERVAL_MS",
    "KICI_ROSTER_GRACE_MS",
    "KICI_ROSTER_TTL_MS",
    "KICI_HOST_REBOOT_DEADLINE_MS",
    "KICI_ORCHESTRATOR_HOST_AGENT_ID",
    "KICI_MAX_FANOUT_HOSTS",
    "KICI_MACHINE_LEDGER_DIR",
    "KICI_EVENT_ROUTER_MAX_CHAIN_DEPTH",
    "KICI_EVENT_ROUTER_RATE_LIMIT_PER_WORKFLOW_PER_MINUTE",
    "KICI_EVENT_ROUTER_EVENT_TTL_SECONDS",
    "KICI_EVENT_ROUTER_CLEANUP_INTERVAL_MS",
    "KICI_EVENT_ROUTER_MAX_DISPATCH_ATTEMPTS",
    "KICI_EVENT_ROUTER_LEASE_DURATION_MS",
    "KICI_EVENT_ROUTER_RETRY_BASE_BACKOFF_MS",
    "KICI_EVENT_ROUTER_RETRY_MAX_BACKOFF_MS",
    "KICI_EVENT_ROUTER_RETRY_SCAN_INTERVAL_MS",
    "KICI_TEST_MODE",
    "KICI_TEST_EVENT_FAIL_FIRST_N",
    "KICI_CLUSTER_NAME",
    "KICI_CLUSTER_COORDINATOR_URL",
    "KICI_CLUSTER_COORDINATOR_URLS",
    "KICI_CLUSTER_ADDRESS",
    "KICI_CLUSTER_PEERS",
    "KICI_CLUSTER_JOIN_TOKEN",
    "KICI_CLUSTER_CREDENTIAL_FILE",
    "KICI_CLUSTER_AUTO_ROTATE_CREDENTIALS",
    "KICI_CLUSTER_RAFT_ELECTION_TIMEOUT_MIN_MS",
    "KICI_CLUSTER_RAFT_ELECTION_TIMEOUT_MAX_MS",
    "KICI_CLUSTER_RAFT_HEARTBEAT_MS",
    "KICI_CLUSTER_PEER_HEARTBEAT_INTERVAL_MS",
    "KICI_CLUSTER_PEER_MAX_RECONNECT_DELAY_MS",
    "KICI_CLUSTER_PEER_STALE_TIMEOUT_MS",
    "KICI_CLUSTER_ELECTION_GRACE_PERIOD_MS",
    "KICI_CLUSTER_SINGLE_NODE",
    "KICI_CLUSTER_TRUSTED_PROXIES",
    "KICI_DEPLOY_MODE",
    "KICI_DEPLOY_CONTAINER",
    "KICI_DEPLOY_CONTAINER_RUNTIME",
    "KICI_ROLES",
    "KICI_PROPERTIES",
    "KICI_EXECUTION_MODE",
    "KICI_GITHUB_TOKEN",
    "KICI_LABELS",
    "KICI_SCALER_MANAGED",
    "KICI_BACKPRESSURE_MODE",
)

#: Prefixes tolerated by the guard (test harness, forwarded agent env, cold store).
ACCEPTED_PREFIXES: tuple[str, ...] = ("KICI_E2E_", "KICI_AGENT_ENV_", "KICI_COLD_STORE_")
#: Suffixes tolerated by the guard.
ACCEPTED_SUFFIXES: tuple[str, ...] = ("_ENV_PROBE",)
#: The test database URL read by the test suite, never by the runtime.
TEST_ONLY_NAMES: tuple[str, ...] = ("KICI_TEST_DATABASE_URL",)

#: YAML keys of upstream's shared config that are accepted and ignored here.
IGNORED_YAML_KEYS: tuple[str, ...] = (
    "server.tlsCertPath",
    "rosterGraceMs",
    "rosterTtlMs",
    "cacheTtlDays",
    "cacheBuildTimeoutMs",
    "cacheMaxTarballBytes",
    "userCacheQuotaBytes",
    "userCacheTtlMs",
)
#: YAML sections accepted and ignored as a whole.
IGNORED_YAML_SECTIONS: tuple[str, ...] = ("cluster", "eventRouter")

YAML_TO_VAR: dict[str, Var] = {v.yaml: v for v in VARIABLES if v.yaml is not None}


def is_known(name: str) -> bool:
    """True when the unknown-``KICI_*`` guard must let ``name`` through."""
    return (
        name in BY_NAME
        or name in ACCEPTED_NAMES
        or name in TEST_ONLY_NAMES
        or name.startswith(ACCEPTED_PREFIXES)
        or name.endswith(ACCEPTED_SUFFIXES)
    )


def aliases_of(primary: str) -> tuple[Var, ...]:
    """The alias rows of ``primary``, in table order."""
    return tuple(v for v in VARIABLES if v.alias_of == primary)
