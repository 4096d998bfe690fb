"""Dispatch notices between orchestrator processes over PostgreSQL ``NOTIFY`` (:mod:`kici_adapters.postgres.notify`).

``kici_jobs`` carries the job or run ids a transaction queued, comma-separated (empty: read everything new).
``kici_cancel`` carries ``<run id>|<force 0/1>|<reason>`` (cancel a run), ``job:<job id>|0|<reason>`` (cancel one
job) and ``proceed:<job id>|<run id>|<agent id>`` (a concurrency slot was granted). The payload formats are shared
with every process on the database, including older ones during a rolling upgrade: do not change them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

from kici_adapters.postgres import notify
from kici_adapters.postgres.pool import Database
from kici_core.dispatch_records import CancelJob, CancelRun, DispatchNotice, JobsQueued, Proceed

__all__ = ["decode", "encode", "listen", "publish"]


def encode(notice: DispatchNotice) -> tuple[str, str]:
    """``(channel, payload)`` of ``notice``."""
    if isinstance(notice, JobsQueued):
        return notify.JOBS, ",".join(notice.ids)
    if isinstance(notice, CancelRun):
        return notify.CANCEL, f"{notice.run_id}|{int(notice.force)}|{notice.reason}"
    if isinstance(notice, CancelJob):
        return notify.CANCEL, f"job:{notice.job_id}|0|{notice.reason}"
    return notify.CANCEL, f"proceed:{notice.job_id}|{notice.run_id}|{notice.agent_id}"


def _three(text: str) -> tuple[str, str, str]:
    a, b, c = [*text.split("|", 2), "", ""][:3]
    return a, b, c


def decode(channel: str, payload: str) -> DispatchNotice:
    """The notice a ``(channel, payload)`` carries (missing parts are empty)."""
    if channel != notify.CANCEL:
        return JobsQueued(tuple(part for part in payload.split(",") if part))
    if payload.startswith("proceed:"):
        job_id, run_id, agent_id = _three(payload[len("proceed:") :])
        return Proceed(job_id=job_id, run_id=run_id, agent_id=agent_id)
    if payload.startswith("job:"):
        job_id, _force, reason = _three(payload[len("job:") :])
        return CancelJob(job_id=job_id, reason=reason)
    run_id, force, reason = _three(payload)
    return CancelRun(run_id=run_id, force=force == "1", reason=reason)


async def publish(db: Database, notice: DispatchNotice) -> None:
    """Send ``notice`` to every listening process. Raises ``StorageUnavailable``."""
    await notify.Notifications(db).send(*encode(notice))


@asynccontextmanager
async def listen(db: Database) -> AsyncIterator[AsyncIterator[DispatchNotice]]:
    """Subscribe to both channels (:meth:`kici_adapters.postgres.notify.Notifications.listen`); the iterator
    yields the notices and raises ``StorageUnavailable`` when the connection breaks."""
    async with notify.Notifications(db).listen((notify.JOBS, notify.CANCEL)) as notes:

        async def notices() -> AsyncGenerator[DispatchNotice]:
            async for note in notes:
                yield decode(note.channel, note.payload)

        stream = notices()
        try:
            yield stream
        finally:  # close it before the connection under it (a caller may have stopped iterating mid-stream)
            await stream.aclose()
