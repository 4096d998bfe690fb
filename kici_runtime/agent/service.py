"""The agent process: capacity, job lifecycle, in-flight tracking, drain and shutdown."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
from anyio.abc import TaskGroup

from kici_core.errors import ProtocolError
from kici_core.jsontypes import JSONValue
from kici_runtime.agent import job as job_mod
from kici_runtime.agent.config import AgentConfig
from kici_runtime.agent.connection import AuthRejected, Connection
from kici_runtime.agent.executor import JobRunner
from kici_runtime.agent.outbox import Message, Outbox

log = logging.getLogger("kici.agent")

SHUTDOWN_REASON = "agent shutting down"
CLEANUP_THREADS = 2
"""Work directories removed at the same time (removal runs after the job's slot is free)."""


class Agent:
    """Runs dispatched jobs within ``max_concurrency`` and keeps the orchestrator informed.

    A job counts against capacity while it runs, and stops counting *before* its terminal ``job.status`` is
    queued: the orchestrator dispatches the next job as soon as it reads that status, so the slot must be
    free by then. The job's work directory is removed afterwards, outside the slot (at most
    ``CLEANUP_THREADS`` removals at a time). A job stays in ``inFlightJobs`` until its terminal
    ``job.status`` has actually been written to a socket, so a job that ends while the agent is offline is
    reclaimed on re-register and its buffered outcome is then replayed.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.outbox = Outbox(limit=config.buffer_limit, on_sent=self._on_sent)
        self.connection = Connection(config=config, outbox=self.outbox, handler=self, in_flight=self.in_flight_jobs)
        self.runners: dict[str, JobRunner] = {}
        self.in_flight: dict[str, str] = {}
        self.draining = False
        self._changed = anyio.Event()
        self._finished = anyio.Event()
        self._shutdown_requests = 0
        self._tg: TaskGroup | None = None
        self._started = time.monotonic()
        self._cleanups = anyio.CapacityLimiter(CLEANUP_THREADS)

    # --- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until drained (after :meth:`drain` or :meth:`shutdown`).

        Raises:
            AuthRejected: the orchestrator refused the agent; running jobs are killed first.
        """
        rejected: list[AuthRejected] = []
        async with anyio.create_task_group() as tg:
            self._tg = tg

            async def _connect() -> None:
                try:
                    await self.connection.run()
                except AuthRejected as exc:
                    rejected.append(exc)
                    for runner in list(self.runners.values()):
                        runner.cancel("agent authentication rejected", force=True)
                    await self.wait_idle()
                    self._finished.set()

            tg.start_soon(_connect)
            await self._finished.wait()
            tg.cancel_scope.cancel()
        if rejected:
            raise rejected[0]

    def drain(self) -> None:
        """Stop accepting jobs; exit once running jobs finish and their messages are delivered."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: rejecting new jobs, waiting for %d running job(s)", len(self.runners))
        assert self._tg is not None
        self._tg.start_soon(self._drain_then_exit)

    def shutdown(self) -> None:
        """SIGTERM: the first call drains; later calls cancel running jobs (each escalates the cancel)."""
        self._shutdown_requests += 1
        if self._shutdown_requests == 1 and not self.draining:
            self.drain()
            return
        self.drain()
        for runner in list(self.runners.values()):
            runner.cancel(SHUTDOWN_REASON)

    async def wait_idle(self) -> None:
        """Wait until no job is running."""
        while self.runners:
            changed = self._changed
            await changed.wait()

    async def _drain_then_exit(self) -> None:
        await self.wait_idle()
        with anyio.move_on_after(self.config.drain_flush_timeout_s):
            await self.outbox.wait_empty()
        if len(self.outbox):
            log.warning("exiting with %d undelivered message(s)", len(self.outbox))
        await self.connection.close()
        self._finished.set()

    # --- inbound ----------------------------------------------------------------------------------
    def in_flight_jobs(self) -> list[JSONValue]:
        """``inFlightJobs`` for ``agent.register``."""
        return [{"jobId": job_id, "runId": run_id} for job_id, run_id in self.in_flight.items()]

    def on_dispatch(self, message: dict[str, Any]) -> None:
        """Accept (``job.ack``) or refuse (``job.reject`` + ``agent.status``) a ``job.dispatch``."""
        try:
            spec = job_mod.parse_dispatch(message)
        except ProtocolError as exc:
            log.warning("ignoring an invalid job.dispatch: %s", exc)
            return
        if spec.job_id in self.runners:
            self.outbox.put(job_mod.job_message("job.ack", spec, message_id=str(uuid.uuid4()), now_ms=_now_ms()))
            return
        reason = "draining" if self.draining else "busy" if len(self.runners) >= self.config.max_concurrency else None
        if reason is not None:
            self.outbox.put(
                job_mod.job_message("job.reject", spec, message_id=str(uuid.uuid4()), now_ms=_now_ms(), reason=reason)
            )
            self._send_status()
            return
        runner = JobRunner(
            spec, config=self.config, send=self.outbox.put, release=lambda: self._release(spec.job_id, runner)
        )
        self.runners[spec.job_id] = runner
        self.in_flight[spec.job_id] = spec.run_id
        self.outbox.put(job_mod.job_message("job.ack", spec, message_id=str(uuid.uuid4()), now_ms=_now_ms()))
        assert self._tg is not None
        self._tg.start_soon(self._run_job, runner)
        if self.config.single_job:  # a scaler container: this job is its only one; exit once it is reported
            self.drain()

    def on_cancel(self, message: dict[str, Any]) -> None:
        """Cancel a running job; unknown jobs are ignored (spec §9.3)."""
        runner = self.runners.get(str(message.get("jobId")))
        if runner is None:
            return
        reason = message.get("reason")
        runner.cancel(reason if isinstance(reason, str) and reason else "cancelled", force=message.get("force") is True)

    # --- internals --------------------------------------------------------------------------------
    async def _run_job(self, runner: JobRunner) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception("job %s crashed", runner.spec.job_id)
        finally:
            runner.release()
        self._send_status()  # after the terminal job.status, reporting the freed slot
        await runner.cleanup(self._cleanups)

    def _release(self, job_id: str, runner: JobRunner) -> None:
        """The job no longer holds a slot (its terminal status is about to be queued, or it crashed)."""
        if self.runners.get(job_id) is runner:
            del self.runners[job_id]
        if runner.state is None:
            self.in_flight.pop(job_id, None)
        self._changed.set()
        self._changed = anyio.Event()

    def _on_sent(self, message: Message) -> None:
        if message.get("type") == "job.status" and message.get("state") in job_mod.TERMINAL_JOB_STATES:
            self.in_flight.pop(str(message.get("jobId")), None)

    def _send_status(self) -> None:
        """``agent.status`` after a reject or a finished job; advisory, so only sent while registered
        (it goes through the outbox to stay behind the ``job.reject``/``job.status`` it follows)."""
        if not self.connection.registered:
            return
        self.outbox.put(
            {
                "type": "agent.status",
                "messageId": str(uuid.uuid4()),
                "agentId": self.config.agent_id,
                "activeJobs": len(self.runners),
                "uptimeSeconds": int(time.monotonic() - self._started),
            }
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
