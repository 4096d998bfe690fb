"""``kici-agent``: the reference agent that runs KiCI jobs made of ``run`` steps.

Configuration comes from ``KICI_*`` environment variables, overridden by command-line flags (see
``docs/agent.md``). SIGTERM/SIGINT drain the agent (running jobs finish, new ones are rejected) and a
second one cancels running jobs; SIGUSR1 drains only.
"""

from __future__ import annotations

import logging
import signal
import sys

import anyio
import click

from kici_core.errors import KiciError
from kici_runtime import wirelogs
from kici_runtime.agent.config import AgentConfig, load_config
from kici_runtime.agent.service import Agent

__all__ = ["Agent", "AgentConfig", "load_config", "main", "serve"]


async def serve(config: AgentConfig) -> None:
    """Run an agent with signal handling until it has drained.

    Raises:
        AuthError: the orchestrator refused the agent's token.
    """
    agent = Agent(config)
    failure: KiciError | None = None
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:

            async def _signals() -> None:
                async for signum in signals:
                    logging.getLogger("kici.agent").info("received %s", signal.Signals(signum).name)
                    if signum == signal.SIGUSR1:
                        agent.drain()
                    else:
                        agent.shutdown()

            tg.start_soon(_signals)
            try:
                await agent.run()
            except KiciError as exc:  # raised outside the task group, so it is not wrapped
                failure = exc
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", help="Orchestrator URL (ws://, wss://, http:// or https://). Env: KICI_ORCHESTRATOR_URL.")
@click.option("--agent-id", help="Agent id. Env: KICI_AGENT_ID. Default: <hostname>-<8 hex>.")
@click.option("--labels", help="Comma-separated labels. Env: KICI_AGENT_LABELS.")
@click.option("--max-concurrency", type=int, help="Jobs run at once. Env: KICI_AGENT_MAX_CONCURRENCY. Default 1.")
@click.option("--work-dir", help="Where job work directories go. Env: KICI_AGENT_WORK_DIR. Default: a temp dir.")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(
    url: str | None,
    agent_id: str | None,
    labels: str | None,
    max_concurrency: int | None,
    work_dir: str | None,
    log_level: str,
) -> None:
    """Connect to a KiCI orchestrator and run the jobs it dispatches.

    The agent token is read from KICI_AGENT_TOKEN only (never a flag, so it stays out of process lists).
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wirelogs.install()  # the websockets frame dumps would show the start of the token at DEBUG
    try:
        config = load_config(
            url=url, agent_id=agent_id, labels=labels, max_concurrency=max_concurrency, work_dir=work_dir
        )
        anyio.run(serve, config)
    except KiciError as exc:
        click.echo(f"kici-agent: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside serve()
        sys.exit(130)
