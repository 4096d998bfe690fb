"""Bounded waits that say what they waited for and what they saw when they give up.

Every wait in the e2e tests goes through one of these, so a timeout on a loaded machine reads as a diagnosis
("waited 60 s for all 8 runs to finish; last seen: {...}") rather than a bare ``TimeoutError``:

* :func:`until` polls a condition on external state (a database, a subprocess, a log) that offers nothing to
  wait on, and returns the first truthy value it produced;
* :func:`within` bounds a block that waits on an event or a socket, naming what the block waits for.

``seen`` is called only on timeout; it may be a plain or an async callable. Without it, :func:`until` reports the
last value its condition returned.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio

__all__ = ["WaitTimeout", "describe", "until", "within"]

T = TypeVar("T")

BOUND = 60.0
INTERVAL = 0.05
"""Polling interval of :func:`until`: a pause between probes of external state, not a synchronisation sleep."""

Seen = Callable[[], Any] | Callable[[], Awaitable[Any]]


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message names what was awaited and what was last seen."""


def _message(what: str, bound: float, seen: str) -> str:
    return f"timed out after {bound:g} s waiting for {what}; last seen: {seen}"


async def describe(seen: Seen | None) -> str:
    """Run a ``seen`` callable (sync or async) for a timeout message; its own failure is reported, not raised."""
    if seen is None:
        return "(nothing recorded)"
    try:
        value = seen()
        if inspect.isawaitable(value):
            value = await value
    except Exception as exc:  # a broken probe must not hide the timeout it explains
        return f"(could not describe the state: {exc!r})"
    return value if isinstance(value, str) else repr(value)


async def until(
    check: Callable[[], Awaitable[T]],
    *,
    what: str,
    bound: float = BOUND,
    seen: Seen | None = None,
    interval: float = INTERVAL,
) -> T:
    """Call ``check`` until it returns a truthy value and return that value, within ``bound`` seconds.

    Raises:
        WaitTimeout: the condition did not hold in time; the message names ``what`` and the state ``seen``
            reports (by default the last value ``check`` returned).
    """
    last: list[T] = []
    try:
        with anyio.fail_after(bound) as scope:
            while True:
                value = await check()
                if value:
                    return value
                last[:] = [value]
                await anyio.sleep(interval)
    except TimeoutError:
        if not scope.cancelled_caught:
            raise
        text = "(describing the state timed out)"
        with anyio.move_on_after(10):
            text = await describe(seen if seen is not None else (lambda: last[0] if last else "(no answer)"))
        raise WaitTimeout(_message(what, bound, text)) from None


@contextmanager
def within(bound: float, what: str, seen: Callable[[], Any] | None = None) -> Iterator[None]:
    """Bound a block that waits for ``what``: on timeout raise :class:`WaitTimeout` naming it and, when given,
    the state ``seen()`` (a plain callable) describes. A ``TimeoutError`` not caused by this bound passes through.
    """
    try:
        with anyio.fail_after(bound) as scope:
            yield
    except TimeoutError:
        if not scope.cancelled_caught:
            raise
        try:
            text = "(nothing recorded)" if seen is None else str(seen())
        except Exception as exc:  # a broken probe must not hide the timeout it explains
            text = f"(could not describe the state: {exc!r})"
        raise WaitTimeout(_message(what, bound, text)) from None
