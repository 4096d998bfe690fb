"""``kici-standalone``: the orchestrator in ``independent`` mode (direct webhooks, no Platform)."""

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
    """Run the KiCI orchestrator in independent mode (KICI_MODE=independent)."""
    entry.run("standalone", config_path, migrate_only)


if __name__ == "__main__":
    main()
