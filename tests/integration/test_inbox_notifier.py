"""``InboxNotifier``: a burst of acceptances costs a handful of ``NOTIFY kici_inbox``, the first one at once."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from kici_runtime.processing import INBOX_CHANNEL, InboxNotifier

pytestmark = pytest.mark.anyio


async def test_a_burst_of_wakes_is_coalesced_and_the_first_is_not_delayed(db_url: str) -> None:
    received: list[float] = []
    arrived = anyio.Event()
    listener = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
    async with listener:
        await listener.execute(f"LISTEN {INBOX_CHANNEL}")
        notifier = InboxNotifier(db_url, interval=0.05)

        async def listen() -> None:
            nonlocal arrived
            async for _ in listener.notifies():
                received.append(anyio.current_time())
                arrived, done = anyio.Event(), arrived
                done.set()

        async def until(count: int) -> None:
            while len(received) < count:
                await arrived.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                tg.start_soon(notifier.run)
                began = anyio.current_time()
                notifier.wake()
                await until(1)
                first_after = received[0] - began
                for _ in range(40):  # 40 acceptances over about 0.2 s
                    notifier.wake()
                    await anyio.sleep(0.005)
                await until(2)
                await anyio.sleep(0.3)  # the trailing notification for the last wakes has gone out, then quiet
                tg.cancel_scope.cancel()
    assert first_after < 1.0  # the first one of a burst goes out at once (a connect, then the NOTIFY)
    assert 2 <= notifier.sent <= 10  # not one per wake
    assert len(received) == notifier.sent
