"""``kici-server``: the orchestrator in ``platform`` or ``hybrid`` mode, connected to the KiCI Platform relay.

The process is the standalone one (same HTTP app, stores and workers, assembled by ``wiring.py``) plus the
Platform link (:mod:`kici_runtime.orchestrator.platform_link`): the relay client that receives relayed webhooks and
drains the durable outbox of messages for the Platform. In ``platform`` mode the direct webhook routes answer
403; in ``hybrid`` mode they accept deliveries too, and a delivery arriving both ways is run once.

Boot refuses (exit 1) ``independent`` mode (use ``kici-standalone``) and a missing ``KICI_PLATFORM_URL`` or
``KICI_PLATFORM_TOKEN``; ``kici_runtime.config.settings`` performs those checks before anything is opened.
"""

from __future__ import annotations

import click

from kici_runtime.orchestrator import entry


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML configuration file (overrides KICI_CONFIG).",
)
@click.option("--migrate-only", is_flag=True, help="Apply database migrations and exit.")
def main(config_path: str | None, migrate_only: bool) -> None:
    """Run the KiCI orchestrator in platform or hybrid mode (KICI_MODE=platform|hybrid)."""
    entry.run("server", config_path, migrate_only)


if __name__ == "__main__":
    main()
