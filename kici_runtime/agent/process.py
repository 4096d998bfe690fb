"""Running one child process in its own process group, with cancel and timeout handling.

The child gets a new session (so its whole process group can be signalled), stdin from ``/dev/null``,
and stdout and stderr merged into one pipe, streamed to a callback. Stopping it sends SIGTERM to the
group, waits up to the grace period, then SIGKILL. When the child exits normally, anything it left
running in its group is killed, so a step cannot leave stray processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from anyio.abc import Process

_EOF_GRACE_S = 5.0


class StopRequest:
    """A job-wide stop switch: ``cancel`` asks for a graceful stop, a second ``cancel`` forces it."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        self.forced = anyio.Event()
        self.reason = ""

    def cancel(self, reason: str, *, force: bool = False) -> None:
        """Request a stop; calling it again (or with ``force``) escalates to SIGKILL."""
        if self.requested.is_set() or force:
            self.forced.set()
        if not self.requested.is_set():
            self.reason = reason
        self.requested.set()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessResult:
    """How a child process ended."""

    exit_code: int | None
    signal: str | None
    stopped_by: Literal["cancel", "timeout"] | None


def _signal_group(proc: Process, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _stop(proc: Process, grace_s: float, forced: anyio.Event) -> None:
    _signal_group(proc, signal.SIGTERM)
    with anyio.move_on_after(grace_s):
        async with anyio.create_task_group() as tg:

            async def _exit() -> None:
                await proc.wait()
                tg.cancel_scope.cancel()

            async def _force() -> None:
                await forced.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(_exit)
            tg.start_soon(_force)
    _signal_group(proc, signal.SIGKILL)


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_output: Callable[[bytes], None],
    stop: StopRequest,
    deadline: float | None,
    grace_s: float,
) -> ProcessResult:
    """Run ``argv`` to completion, a stop request, or ``deadline`` (an ``anyio.current_time()`` value).

    Raises:
        OSError: the program could not be started.
    """
    stopped_by: Literal["cancel", "timeout"] | None = None
    async with await anyio.open_process(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        stdout = proc.stdout
        async with anyio.create_task_group() as tg:
            pumped = anyio.Event()

            async def _pump() -> None:
                async for data in stdout:
                    on_output(data)
                pumped.set()

            async def _watch() -> None:
                nonlocal stopped_by
                with anyio.CancelScope(deadline=deadline if deadline is not None else float("inf")):
                    await stop.requested.wait()
                    stopped_by = "cancel"
                if stopped_by is None:
                    stopped_by = "timeout"
                if stop.forced.is_set():
                    _signal_group(proc, signal.SIGKILL)
                else:
                    await _stop(proc, grace_s, stop.forced)

            tg.start_soon(_pump)
            tg.start_soon(_watch)
            await proc.wait()
            # Kill whatever the child left in its group so the pipe reaches EOF; a process that left the
            # group but kept the pipe open gets a short grace before its output is abandoned.
            _signal_group(proc, signal.SIGKILL)
            with anyio.move_on_after(_EOF_GRACE_S):
                await pumped.wait()
            tg.cancel_scope.cancel()
    code = proc.returncode
    if code is not None and code < 0:
        return ProcessResult(exit_code=None, signal=signal.Signals(-code).name, stopped_by=stopped_by)
    return ProcessResult(exit_code=code, signal=None, stopped_by=stopped_by)
