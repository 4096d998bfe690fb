"""The background delivery worker: claims accepted deliveries from the inbox and runs the pipeline on them.

Several workers (in one process or many) share the inbox safely: claims use leases, so a crashed worker's
deliveries are claimed again once the lease expires. ``wake()`` is called by the webhook routes after each
acceptance so processing starts at once instead of at the next poll.

The loop keeps up to ``concurrency`` deliveries in flight and claims only for free slots: a slot freed by a
finished delivery is refilled at once (while the last claim came back full, i.e. there is a backlog), and a
wake-up claims at once, so one slow delivery never holds back the ones accepted after it.

A run's payload copy (best effort, see ``handling.handle_item``) is written in the background: the delivery's
slot is freed as soon as its outcome is committed, not after an object-store write (a durable file write costs
more than the whole database transaction). At most ``max_pending_copies`` writes are in flight; a further copy
waits for one to finish, so a slow object store slows processing down instead of piling up bodies in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from kici_adapters import metrics
from kici_core import errors, handling
from kici_core.delivery_records import InboxItem
from kici_core.pipeline import Pipeline
from kici_core.ports import BlobStore, DeliveryInbox, PlatformLink

log = logging.getLogger("kici.worker")


_T = TypeVar("_T")


class ThreadOffload:
    """The pipeline's :class:`~kici_core.pipeline.Offload`: runs the CPU-bound steps (lock-file parsing, matching,
    planning) in a worker thread, one at a time per process, never on the event loop, so webhook intake, agent
    dispatch and ``/health`` stay responsive while a large or hostile lock file is processed."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None  # made in the running event loop

    async def __call__(self, fn: Callable[[], _T], /) -> _T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter)


class PrometheusObserver:
    def matched(self, seconds: float) -> None:
        metrics.trigger_match_duration.observe(seconds)

    def processed(self, result: str) -> None:
        metrics.webhooks_processed.labels(result=result).inc()


class _BackgroundCopies:
    """A ``BlobStore`` whose ``put`` starts the write in a task group and returns once it has started.

    Only ``put`` is used by ``handling.handle_item``; the other methods pass through. A failed write is reported
    to ``on_error`` (the caller of ``put`` has moved on by then).
    """

    def __init__(
        self,
        blobs: BlobStore,
        tg: TaskGroup,
        limit: anyio.Semaphore,
        on_error: Callable[[str, BaseException], Awaitable[None]],
    ) -> None:
        self._blobs = blobs
        self._tg = tg
        self._limit = limit
        self._on_error = on_error

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Start writing ``data`` at ``key``; waits only while ``limit`` writes are already in flight."""
        await self._limit.acquire()
        self._tg.start_soon(self._write, key, data, durable)

    async def _write(self, key: str, data: bytes, durable: bool) -> None:
        try:
            await self._blobs.put(key, data, durable=durable)
        except errors.KiciError as exc:
            await self._on_error(key, exc)
        finally:
            self._limit.release()

    async def get(self, key: str) -> bytes:
        """The object (passed through)."""
        return await self._blobs.get(key)

    async def exists(self, key: str) -> bool:
        """Whether the object exists (passed through)."""
        return await self._blobs.exists(key)

    async def delete(self, key: str) -> None:
        """Remove the object (passed through)."""
        await self._blobs.delete(key)


class DeliveryWorker:
    def __init__(
        self,
        *,
        inbox: DeliveryInbox,
        pipeline: Pipeline,
        platform: PlatformLink | None = None,
        worker_id: str = "worker",
        concurrency: int = 8,
        lease_seconds: float = 120.0,
        poll_seconds: float = 1.0,
        on_runs_created: Callable[[], None] | None = None,
        blobs: BlobStore | None = None,
        max_pending_copies: int = 64,
    ) -> None:
        self._inbox = inbox
        self._blobs = blobs
        self._copies: BlobStore | None = blobs
        self._copy_limit = anyio.Semaphore(max(1, max_pending_copies))
        self._pipeline = pipeline
        self._platform = platform
        self._worker_id = worker_id
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._wake = anyio.Event()
        self._slot = anyio.Event()
        self._active = 0
        self._refill = max(1, concurrency // 2)
        self._on_runs_created = on_runs_created
        self.processed = 0

    @property
    def concurrency(self) -> int:
        """Deliveries processed at once."""
        return self._concurrency

    @property
    def worker_id(self) -> str:
        """The id this worker claims under (its leases are freed at start)."""
        return self._worker_id

    def wake(self) -> None:
        """Ask the worker to look at the inbox now (thread-unsafe; call from the event loop)."""
        self._wake.set()

    async def _handle(self, item: InboxItem, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            await self._process(item)

    async def _process(self, item: InboxItem) -> None:
        try:
            run_ids = await handling.handle_item(
                item,
                inbox=self._inbox,
                pipeline=self._pipeline,
                platform=self._platform,
                on_error=self._log_error,
                blobs=self._copies,
                on_copy_error=self._log_copy_error,
            )
        except errors.Unavailable as exc:
            # recording the outcome failed (storage down): the lease expires and the item is claimed again
            log.warning(
                "could not record a delivery outcome; it will be processed again",
                extra={"deliveryId": item.delivery_id, "error": str(exc)},
            )
            return
        except Exception as exc:  # nothing one delivery does may stop the worker (or the server with it)
            # the lease expires and the claim counts a crash; after MAX_CRASHES the delivery is parked failed
            log.error(
                "delivery processing crashed; it will be retried, then parked",
                extra={"deliveryId": item.delivery_id, "error": f"{type(exc).__name__}: {exc}"[:500]},
            )
            return
        self.processed += 1
        if run_ids and self._on_runs_created is not None:
            self._on_runs_created()
        if run_ids is not None and log.isEnabledFor(logging.INFO):
            log.info(
                "Webhook processed", extra={"deliveryId": item.delivery_id, "event": item.event, "runs": len(run_ids)}
            )

    async def _slot_holder(self, item: InboxItem) -> None:
        try:
            await self._process(item)
        finally:
            self._active -= 1
            self._slot.set()

    async def _log_copy_error(self, run_id: str, exc: BaseException) -> None:
        log.warning("could not store the run's payload copy", extra={"runId": run_id, "error": str(exc)})

    async def _log_background_copy_error(self, key: str, exc: BaseException) -> None:
        log.warning("could not store the run's payload copy", extra={"key": key, "error": str(exc)})

    def _copy_in(self, tg: TaskGroup) -> None:
        """Write payload copies in ``tg`` from now on (no-op without a blob store)."""
        if self._blobs is not None:
            self._copies = _BackgroundCopies(self._blobs, tg, self._copy_limit, self._log_background_copy_error)

    async def _log_error(self, item: InboxItem, exc: BaseException) -> None:
        metrics.processing_failures.labels(reason=type(exc).__name__).inc()
        log.warning(
            "delivery processing failed",
            extra={"deliveryId": item.delivery_id, "error": str(exc), "attempt": item.attempts},
        )

    async def _claim(self, limit: int) -> list[InboxItem]:
        try:
            return await self._inbox.claim(worker_id=self._worker_id, limit=limit, lease_seconds=self._lease)
        except errors.Unavailable as exc:
            log.warning("inbox unavailable", extra={"error": str(exc)})
            return []

    async def run_once(self) -> int:
        """Claim one batch and process it all; returns how many items were claimed."""
        items = await self._claim(self._concurrency * 2)
        if items:
            limiter = anyio.CapacityLimiter(self._concurrency)
            async with anyio.create_task_group() as tg:
                self._copy_in(tg)  # the copies finish before this returns
                for item in items:
                    tg.start_soon(self._handle, item, limiter)
            self._copies = self._blobs
        return len(items)

    async def run(self) -> None:
        """Process until cancelled, up to ``concurrency`` deliveries at a time. First frees the leases this
        worker id held before a restart."""
        try:
            released = await self._inbox.release_leases(self._worker_id)
        except errors.Unavailable:
            released = 0
        if released:
            log.info("Released deliveries claimed before a restart", extra={"count": released})
        try:
            async with anyio.create_task_group() as tg:
                self._copy_in(tg)
                while True:
                    self._wake = anyio.Event()
                    self._slot = anyio.Event()
                    free = self._concurrency - self._active
                    if free <= 0:
                        await self._slot.wait()
                        continue
                    items = await self._claim(free)
                    for item in items:
                        self._active += 1
                        tg.start_soon(self._slot_holder, item)
                    if len(items) == free:
                        # probably more waiting: claim again once half the slots are free (a backlog is then
                        # worked off in claims of several rows instead of one claim per finished delivery)
                        while self._concurrency - self._active < self._refill:
                            await self._slot.wait()
                            self._slot = anyio.Event()
                        continue
                    if not items and not self._active:
                        try:
                            metrics.inbox_depth.set(await self._inbox.depth())
                        except errors.Unavailable:
                            pass
                    with anyio.move_on_after(self._poll):
                        await self._wake.wait()
        finally:
            self._copies = self._blobs
