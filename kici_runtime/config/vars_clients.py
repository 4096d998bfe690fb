"""Variables of the client programs: ``kici-agent`` and ``kici-admin``."""

from __future__ import annotations

from kici_runtime.config import var

VARIABLES: tuple[var.Var, ...] = (
    # kici-agent
    var.row(
        "KICI_AGENT_TOKEN",
        "str",
        None,
        "core",
        "Agent token (kat_…) presented on connect; omit when the orchestrator runs KICI_AGENT_AUTH=none.",
        secret=True,
        used_by=var.AGENT,
    ),
    var.row(
        "KICI_AGENT_LABELS",
        "str",
        "",
        "core",
        "Comma-separated agent labels; labels may not start with `kici:` (the agent adds those itself).",
        used_by=var.AGENT,
    ),
    var.row(
        "KICI_AGENT_MAX_CONCURRENCY",
        "int",
        "1",
        "core",
        "Jobs the agent runs at once.",
        minimum=1,
        used_by=var.AGENT,
    ),
    var.row(
        "KICI_AGENT_ID",
        "str",
        None,
        "core",
        "Agent id; derived from the host name and work directory when unset.",
        used_by=var.AGENT,
    ),
    var.row(
        "KICI_AGENT_WORK_DIR",
        "path",
        None,
        "core",
        "Directory for job checkouts (default: a fresh temporary directory).",
        used_by=var.AGENT,
    ),
    var.row(
        "KICI_AGENT_GRACE_PERIOD_SECONDS",
        "float",
        "10",
        "core",
        "On shutdown, how long running steps get before they are killed.",
        minimum=0,
        used_by=var.AGENT,
    ),
    var.row(
        "KICI_MAX_LOG_SIZE_BYTES",
        "int",
        "10485760",
        "core",
        "Per-step log cap; beyond it one truncation marker is sent.",
        minimum=1,
        used_by=var.AGENT,
    ),
    # kici-admin
    var.row(
        "KICI_ADMIN_URL",
        "url",
        "http://localhost:4000",
        "core",
        "kici-admin --url default (include any KICI_BASE_PATH).",
        used_by=var.ADMIN,
    ),
    var.row(
        "KICI_ADMIN_TOKEN",
        "str",
        None,
        "core",
        "kici-admin --token default.",
        secret=True,
        used_by=var.ADMIN,
    ),
)
