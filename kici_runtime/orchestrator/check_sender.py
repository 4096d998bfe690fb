"""The check-run sender: delivers the states in ``github_check_runs`` to GitHub (webhooks spec §6.10).

Every orchestrator process runs one :class:`CheckSender`. Each pass leases the check runs whose latest state is
not sent yet (rows leased by another process are skipped, so no check run is sent by two processes at once),
renders each state (``kici_core.checks``: title, summary, for a failed job its failing step and the masked end
of its log, ``details_url``) and sends it with the installation token of the source that ran the workflow.
What GitHub refuses is retried later with backoff, or when GitHub asked (``Retry-After``, ``x-ratelimit-reset``);
states that changed meanwhile travel as one request. Nothing is held in memory between passes: a restart
resumes from the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from kici_adapters import metrics
from kici_adapters.github.checks import GitHubChecks, SendOutcome
from kici_adapters.github.provider import GitHubProvider
from kici_adapters.postgres.checks import PendingCheck, PgCheckOutbox
from kici_core import checks, errors
from kici_core.ports import SourceStore

__all__ = ["CheckSender", "backoff"]

log = logging.getLogger("kici.checks")

MAX_BACKOFF = 300.0
"""Longest wait between two attempts of one check run when GitHub did not say how long to wait."""


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... up to :data:`MAX_BACKOFF`."""
    return float(min(MAX_BACKOFF, 2 ** max(0, attempts - 1)))


class CheckSender:
    """Sends pending check-run states (module docstring).

    Args:
        outbox: the ``github_check_runs`` table.
        sources: to find the source (GitHub App) of a run by its routing key.
        github: the provider holding each App's installation tokens.
        worker_id: this process's id on leased rows.
        dashboard_url: ``KICI_DASHBOARD_URL``, the base of ``details_url`` (None: no link).
        mask: masks registered secrets in log lines (on top of well-known token shapes).
        poll_interval: seconds between passes that found nothing to send.
        batch: check runs leased per pass; ``concurrency`` of them are sent at once.
        lease_seconds: how long a leased row stays with this process before another may take it.
    """

    def __init__(
        self,
        *,
        outbox: PgCheckOutbox,
        sources: SourceStore,
        github: GitHubProvider,
        worker_id: str,
        dashboard_url: str | None = None,
        mask: Callable[[str], str] | None = None,
        poll_interval: float = 0.5,
        batch: int = 32,
        concurrency: int = 8,
        lease_seconds: float = 120.0,
    ) -> None:
        self._outbox = outbox
        self._sources = sources
        self._github = github
        self._worker = worker_id
        self._dashboard = dashboard_url
        self._mask = mask
        self._poll = poll_interval
        self._batch = batch
        self._limit = anyio.CapacityLimiter(concurrency)
        self._lease = lease_seconds

    async def run(self) -> None:
        """Send forever (until cancelled); a database outage pauses the loop, it never ends it. Rows this
        process's previous life had leased are taken back first."""
        try:
            await self._outbox.release_leases(self._worker)
        except errors.Unavailable as exc:
            log.warning("check-run sender: database unavailable", extra={"error": str(exc)})
        while True:
            try:
                sent = await self.pass_once()
            except errors.Unavailable as exc:
                log.warning("check-run sender: database unavailable", extra={"error": str(exc)})
                sent = 0
            if sent == 0:
                await anyio.sleep(self._poll)

    async def pass_once(self) -> int:
        """Lease and send one batch; returns how many check runs were attempted."""
        claimed = await self._outbox.claim(worker_id=self._worker, limit=self._batch, lease_seconds=self._lease)
        if not claimed:
            return 0
        async with anyio.create_task_group() as tg:
            for check in claimed:
                tg.start_soon(self._send_one, check)
        return len(claimed)

    async def _send_one(self, check: PendingCheck) -> None:
        async with self._limit:
            try:
                outcome = await self._attempt(check)
            except errors.StorageUnavailable:
                raise
            except errors.KiciError as exc:
                outcome = SendOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
            if outcome.ok:
                metrics.github_check_runs.labels(result="created" if outcome.created else "updated").inc()
                await self._outbox.sent(check, github_id=outcome.github_id)
                return
            result = "rejected" if outcome.permanent else "retried"
            metrics.github_check_runs.labels(result=result).inc()
            delay = outcome.retry_after if outcome.retry_after is not None else backoff(check.attempts)
            log.warning(
                "GitHub check run not delivered" + (" (not retried)" if outcome.permanent else ""),
                extra={
                    "checkRun": check.name,
                    "runId": check.run_id,
                    "repo": check.repo,
                    "error": outcome.error,
                    "attempt": check.attempts,
                    "retryIn": delay,
                },
            )
            await self._outbox.failed(
                check,
                outcome.error or "unknown error",
                retry_after=delay,
                give_up=outcome.permanent,
                forget_id=outcome.forget_id,
            )

    def _masked(self, text: str | None) -> str | None:
        if text is None:
            return None
        text = checks.mask_tokens(text)
        return self._mask(text) if self._mask is not None else text

    async def _attempt(self, check: PendingCheck) -> SendOutcome:
        source = await self._sources.github_by_routing_key(check.routing_key)
        if source is None:
            return SendOutcome(ok=False, error=f"no GitHub source {check.routing_key} (removed?)", retry_after=600.0)
        app = await self._github.app_for(source)
        failed_step = None
        if check.job_id is not None and check.conclusion == "failure":
            found = await self._outbox.failed_step(check.job_id)
            if found is not None:
                failed_step = checks.FailedStep(
                    index=found.index,
                    name=found.name,
                    exit_code=found.exit_code,
                    error=found.error,
                    tail=tuple(checks.tail_lines(found.tail, mask=self._mask)),
                )
        view = checks.CheckView(
            name=check.name,
            head_sha=check.head_sha,
            external_id=check.external_id,
            run_id=check.run_id,
            workflow_name=check.workflow_name,
            job_name=check.job_name,
            status=check.status,
            conclusion=check.conclusion,
            detail=self._masked(check.detail),
            agent_id=check.agent_id,
            trace_id=check.delivery_id,
            attempt=check.run_attempt,
            started_at=check.started_at,
            completed_at=check.completed_at,
            failed_step=failed_step,
            details_url=checks.details_url(self._dashboard, org_id=check.org_id, run_id=check.run_id),
        )
        body = checks.request_body(view, create=check.github_id is None)
        return await GitHubChecks(app).send(check.repo, body, github_id=check.github_id, lookup=check.attempts > 1)
