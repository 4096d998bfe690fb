"""The declarative table of every environment variable the project reads or accepts.

``VARIABLES`` is the single source of truth: :mod:`kici_runtime.config.settings` reads values through it,
the unknown-``KICI_*`` guard takes its known names from it, and ``docs/configuration.md`` is
generated from it (``tools/gen_config_docs.py``). Its rows are written in the ``vars_*`` modules, one per
group of sections, and joined here in the order of the reference page; a row is a :class:`~.var.Var`.

``ACCEPTED_NAMES`` / ``ACCEPTED_PREFIXES`` list upstream variables that are tolerated by the guard
(so deployments that still set them boot) but have no effect here.
"""

from __future__ import annotations

from kici_runtime.config import var, vars_clients, vars_jobs, vars_server, vars_storage

Var = var.Var

VARIABLES: tuple[Var, ...] = (
    *vars_server.VARIABLES,
    *vars_jobs.VARIABLES,
    *vars_storage.VARIABLES,
    *vars_clients.VARIABLES,
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
