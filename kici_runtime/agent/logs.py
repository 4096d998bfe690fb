"""Step log streaming: bytes from a process become batched ``log.chunk`` messages.

One :class:`LogStreamer` per ``(job, stepIndex)``. Lines are flushed when ``batch_lines`` are buffered,
``flush_interval_s`` after the first buffered line, or when the step ends. Past ``max_bytes`` of line
bytes, one ``[TRUNCATED: ...]`` line is sent and the rest is dropped (spec §6.4).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

Emit = Callable[[int, list[str]], None]
"""Called with ``(stepIndex, lines)`` for each chunk to send."""


class LogStreamer:
    """Batches lines for one step; run :meth:`run_flusher` in a task group while the step runs."""

    def __init__(
        self,
        *,
        step_index: int,
        emit: Emit,
        max_bytes: int,
        batch_lines: int = 50,
        flush_interval_s: float = 0.1,
    ) -> None:
        self.step_index = step_index
        self._emit = emit
        self._max_bytes = max_bytes
        self._batch_lines = batch_lines
        self._interval = flush_interval_s
        self._lines: list[str] = []
        self._pending = anyio.Event()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self.bytes_streamed = 0
        self.truncated = False
        self._scope: anyio.CancelScope | None = None

    def start(self, tg: TaskGroup) -> None:
        """Run the timed flusher in ``tg`` until :meth:`close`."""
        self._scope = anyio.CancelScope()
        tg.start_soon(self._flusher_task)

    async def _flusher_task(self) -> None:
        assert self._scope is not None
        with self._scope:
            await self.run_flusher()

    def feed(self, data: bytes) -> None:
        """Add raw process output; complete lines are buffered, a trailing partial line is kept."""
        text = self._partial + self._decoder.decode(data)
        *complete, self._partial = text.split("\n")
        for line in complete:
            self.line(line)

    def line(self, text: str) -> None:
        """Buffer one line (without its newline)."""
        if self.truncated:
            return
        text = text.removesuffix("\r")
        size = len(text.encode("utf-8", errors="replace"))
        if self.bytes_streamed + size > self._max_bytes:
            self.truncated = True
            self._lines.append(f"[TRUNCATED: log output exceeded {self._max_bytes} bytes]")
            self.flush()
            return
        self.bytes_streamed += size
        self._lines.append(text)
        if len(self._lines) >= self._batch_lines:
            self.flush()
        else:
            self._pending.set()

    def close(self) -> None:
        """End of output: emit the trailing partial line and flush everything."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        if rest:
            self.line(rest)
        self.flush()
        if self._scope is not None:
            self._scope.cancel()

    def flush(self) -> None:
        """Send whatever is buffered as one chunk."""
        if self._lines:
            lines, self._lines = self._lines, []
            self._emit(self.step_index, lines)
        self._pending = anyio.Event()

    async def run_flusher(self) -> None:
        """Flush ``flush_interval_s`` after the first line of each batch; runs until cancelled."""
        while True:
            pending = self._pending
            await pending.wait()
            await anyio.sleep(self._interval)
            if pending is self._pending:
                self.flush()
