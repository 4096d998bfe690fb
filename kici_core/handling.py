"""Handling one claimed inbox item end to end (webhooks spec §5): process it, record its outcome, retry.

:func:`handle_item` runs the :class:`~kici_core.pipeline.Pipeline` on the item's stored payload, stores a
default-branch push's registrations, records the outcome and the runs on the inbox (or releases the item with
a backoff, or parks it as ``failed``), tells the Platform what was decided and copies the payload next to
each new run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from kici_core import errors, keys, platform_events
from kici_core.delivery_records import InboxItem
from kici_core.jsontypes import JSONValue
from kici_core.pipeline import Pipeline, ProcessOutput
from kici_core.ports import BlobStore, DeliveryInbox, PlatformLink

MAX_ATTEMPTS = 8
"""Processing attempts before a delivery is parked as ``failed`` (replayable with ``event-log replay``)."""


def retry_delay(attempts: int) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones; None: give up and park it."""
    if attempts >= MAX_ATTEMPTS:
        return None
    return float(min(2**attempts, 300))


async def handle_item(
    item: InboxItem,
    *,
    inbox: DeliveryInbox,
    pipeline: Pipeline,
    platform: PlatformLink | None = None,
    on_error: Callable[[InboxItem, BaseException], Awaitable[None]] | None = None,
    blobs: BlobStore | None = None,
    on_copy_error: Callable[[str, BaseException], Awaitable[None]] | None = None,
) -> list[str] | None:
    """Process one claimed item and record its outcome; returns the run ids, or None when it will be retried.

    Retryable failures (``Unavailable``: GitHub or storage down) release the item with a backoff; after
    :data:`MAX_ATTEMPTS` it is parked as ``failed``. Any other error parks it as ``failed`` at once with the
    error's message (it will fail the same way again; ``event-log replay`` retries by hand).

    With ``blobs``, each run created here also gets a copy of its triggering payload at
    ``executions/<runId>/webhook-payload.json`` (best effort: the event log keeps the original, so the copy is
    written with ``durable=False``; a failed write is reported to ``on_copy_error``).
    """
    try:
        body = await inbox.payload(item)
        out = await pipeline.process(item, body)
        if out.registration is not None and pipeline.registrations is not None:
            update = out.registration
            if update.workflows:
                await pipeline.registrations.register(
                    org_id=update.org_id, routing_key=update.routing_key, repo=update.repo, workflows=update.workflows
                )
            else:
                await pipeline.registrations.unregister_repo(routing_key=update.routing_key, repo=update.repo)
    except errors.ProcessingTimeout as exc:
        # counted as a crash: after MAX_CRASHES the claim parks the delivery as failed
        if on_error is not None:
            await on_error(item, exc)
        await inbox.fail(item, f"{type(exc).__name__}: {exc}"[:2000], retry_after=retry_delay(0), crashed=True)
        return None
    except errors.Unavailable as exc:
        if on_error is not None:
            await on_error(item, exc)
        delay = retry_delay(item.attempts)
        await inbox.fail(item, f"{type(exc).__name__}: {exc}"[:2000], retry_after=delay)
        if delay is None:
            pipeline.observer.processed("error")
        return None
    except errors.KiciError as exc:
        if on_error is not None:
            await on_error(item, exc)
        await inbox.fail(item, f"{type(exc).__name__}: {exc}"[:2000], retry_after=None)
        pipeline.observer.processed("error")
        return None
    except Exception as exc:  # a defect, or input nothing above anticipated: park it, never take the worker down
        if on_error is not None:
            await on_error(item, exc)
        await inbox.fail(item, f"internal error: {type(exc).__name__}: {exc}"[:2000], retry_after=None)
        pipeline.observer.processed("error")
        return None
    run_ids = await inbox.complete(item, out.outcome, out.runs)
    if platform is not None:
        await platform.publish(_decided(item, out, trace_id=pipeline.ids()))
    if blobs is not None:
        created = set(run_ids)
        for run in out.runs:
            if run.run_id in created:
                try:
                    await blobs.put(keys.run_payload_key(run.run_id), body, durable=False)
                except errors.KiciError as exc:
                    if on_copy_error is not None:
                        await on_copy_error(run.run_id, exc)
    return run_ids


def _decided(item: InboxItem, out: ProcessOutput, *, trace_id: str) -> platform_events.DeliveryDecided:
    decisions: tuple[JSONValue, ...] = tuple(d.summary_dict() for d in out.match.decisions) if out.match else ()
    return platform_events.DeliveryDecided(
        trace_id=trace_id,
        delivery_id=item.delivery_id,
        webhook_event=item.event,
        action=item.action,
        repo_identifier=out.outcome.repo_identifier,
        ref=out.outcome.ref,
        matched_workflows=len(out.runs),
        total_workflows=len(decisions),
        decisions=decisions,
    )
