"""The retention sweeper: a singleton duty that deletes finished data past its age, in small batches.

Every process runs :meth:`RetentionSweeper.run`; each round, the one that takes the ``retention`` advisory lock
sweeps (:class:`~kici_adapters.postgres.retention.PgRetention`) and the others skip. What it removed is counted in
``kici_retention_deleted_total{kind}``. ``kici-admin gc`` runs a sweep now (or, with ``--dry-run``, counts what one
would remove) through :meth:`RetentionSweeper.sweep_now`. The clock is injected, so tests move time instead of
waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from kici_adapters import metrics
from kici_adapters.postgres import singletons
from kici_adapters.postgres.pool import Database
from kici_adapters.postgres.retention import PgRetention, SweepReport
from kici_core import errors, retention
from kici_core.jsontypes import JSONObject

__all__ = ["RetentionSweeper", "report_json"]

log = logging.getLogger("kici.retention")

DUTY = "retention"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _count(kind: str, n: int) -> None:
    metrics.retention_deleted.labels(kind=kind).inc(n)


def report_json(report: SweepReport) -> JSONObject:
    """The admin API's answer for a sweep: ``dryRun``, ``deleted`` (or ``wouldDelete``) by kind, the cutoffs."""
    counts: JSONObject = {k: v for k, v in report.counts.items()}
    cutoffs: JSONObject = {k: v for k, v in report.cutoffs.items()}
    return {"dryRun": report.dry_run, "cutoffs": cutoffs, ("wouldDelete" if report.dry_run else "deleted"): counts}


class RetentionSweeper:
    """Runs :class:`PgRetention` under the ``retention`` singleton lock.

    Args:
        db: the pool (the lock is held on one of its connections).
        store: the storage side.
        policy: ages per kind.
        instance_id: this process, recorded as the duty's runner.
        interval_s: seconds between rounds.
        clock: "now" as an aware datetime.
    """

    def __init__(
        self,
        *,
        db: Database,
        store: PgRetention,
        policy: retention.RetentionPolicy,
        instance_id: str,
        interval_s: float = 600.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._db = db
        self._store = store
        self.policy = policy
        self._me = instance_id
        self._interval = interval_s
        self._clock = clock

    async def sweep_now(self, *, dry_run: bool = False) -> SweepReport:
        """Sweep (or count) now. Raises ``Conflict`` when another process holds the duty at this moment (a dry
        run needs no lock), ``StorageUnavailable`` when the database or the blob store fails."""
        cut = retention.cutoffs(self.policy, self._clock())
        if dry_run:
            return await self._store.sweep(cut, batch_size=self.policy.batch_size, dry_run=True)
        async with singletons.hold(self._db, DUTY, self._me) as run:
            if not run:
                raise errors.Conflict("a retention sweep is running in another orchestrator process; try again later")
            started = time.monotonic()
            report = await self._store.sweep(cut, batch_size=self.policy.batch_size, on_deleted=_count)
            run.result = {
                "deleted": {k: v for k, v in report.counts.items()},
                "seconds": round(time.monotonic() - started, 3),
            }
        metrics.retention_last_sweep.set(time.time())
        if any(report.counts.values()):
            log.info("Retention sweep removed finished data", extra={"deleted": report.counts})
        return report

    async def run(self) -> None:
        """Sweep every interval until cancelled; a round another process holds is skipped."""
        while True:
            try:
                await self.sweep_now()
            except errors.Conflict:
                pass
            except errors.Unavailable as exc:
                log.warning("retention sweep stopped early; retrying next round", extra={"error": str(exc)})
            await anyio.sleep(self._interval)
