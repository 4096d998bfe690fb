"""``InboxNotifier``: a burst of acceptances costs a handful of ``NOTIFY kici_inbox``, the first one at once, and
acceptances that come one at a time are each announced at once.

The properties are checked without relying on timing: the first notification of a burst must arrive although the
interval is an hour; wakes made together (all before the event loop runs the notifier again) must cost exactly one
further notification; a wake made after the previous notification was sent must be sent although the interval
is an hour; and wakes made while a notification is being sent must make the notifier wait out its interval.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import psycopg
import pytest

from kici_adapters.postgres.notify import INBOX as INBOX_CHANNEL
from kici_adapters.postgres.notify import InboxNotifier
from tests.support import waits

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def listening(db_url: str, notifier: InboxNotifier) -> AsyncIterator[Callable[[int], Awaitable[int]]]:
    """Run ``notifier`` and a ``LISTEN kici_inbox`` connection; yields ``until(n)``, which waits for the n-th
    notification to arrive."""
    received: list[str] = []
    arrived = anyio.Event()
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with listener:
        await listener.execute(f"LISTEN {INBOX_CHANNEL}")

        async def listen() -> None:
            nonlocal arrived
            async for note in listener.notifies():
                received.append(note.payload)
                arrived, done = anyio.Event(), arrived
                done.set()

        async def until(count: int) -> int:
            with waits.within(
                20,
                f"notification {count} on {INBOX_CHANNEL}",
                lambda: {"received": len(received), "sent": notifier.sent},
            ):
                while len(received) < count:
                    await arrived.wait()
            return len(received)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            tg.start_soon(notifier.run)
            yield until
            tg.cancel_scope.cancel()


async def test_the_first_wake_of_a_burst_is_not_delayed_by_the_interval(db_url: str) -> None:
    notifier = InboxNotifier(db_url, interval=3600.0)
    async with listening(db_url, notifier) as until:
        notifier.wake()
        await until(1)


async def test_wakes_made_together_are_coalesced_into_one_notification(db_url: str) -> None:
    notifier = InboxNotifier(db_url, interval=0.05)
    async with listening(db_url, notifier) as until:
        notifier.wake()
        await until(1)
        for _ in range(40):  # 40 acceptances before the notifier runs again
            notifier.wake()
        await until(2)
        # No wake came after the second notification was sent, so there is no third one to wait for; the
        # counter may trail the delivery by a step of the event loop.
        await waits.until(
            _at(notifier, 2), what="the notifier to count 2 notifications sent", seen=lambda: notifier.sent
        )
    assert notifier.sent == 2


async def test_a_wake_after_the_previous_notification_is_not_held_back_by_the_interval(db_url: str) -> None:
    # Acceptances one at a time (webhooks a few milliseconds apart at a low rate): each is announced at once,
    # not after the interval that paces a burst.
    notifier = InboxNotifier(db_url, interval=3600.0)
    async with listening(db_url, notifier) as until:
        notifier.wake()
        await until(1)
        await waits.until(
            _at(notifier, 1), what="the notifier to count its first notification sent", seen=lambda: notifier.sent
        )
        notifier.wake()
        await until(2)


async def test_wakes_while_a_notification_is_sent_pace_the_next_one(db_url: str) -> None:
    # A burst: acceptances keep coming while the notification is on its way, so the notifier waits out its
    # interval (an hour here) before the next one, however many more wakes come.
    notifier = InboxNotifier(db_url, interval=3600.0)
    async with listening(db_url, notifier) as until:
        with waits.within(20, "the first notification sent", lambda: {"sent": notifier.sent}):
            while notifier.sent == 0:  # every step of the event loop while it is sent, an acceptance
                notifier.wake()
                await anyio.lowlevel.checkpoint()
        await until(1)
        for _ in range(200):
            notifier.wake()
            await anyio.lowlevel.checkpoint()
    assert notifier.sent == 1


def _at(notifier: InboxNotifier, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return notifier.sent >= count

    return check
