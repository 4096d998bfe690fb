"""Running one dispatched job: work directory, checkout, `run` steps, statuses and logs (spec §6)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from kici_core.jsontypes import JSONValue
from kici_runtime.agent import checkout as checkout_mod
from kici_runtime.agent import job as job_mod
from kici_runtime.agent import process
from kici_runtime.agent.config import AgentConfig
from kici_runtime.agent.job import UNSUPPORTED_STEP, JobSpec, StepSpec
from kici_runtime.agent.logs import LogStreamer
from kici_runtime.agent.process import ProcessResult, StopRequest

Send = Callable[[dict[str, JSONValue]], None]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _new_id() -> str:
    return str(uuid.uuid4())


class JobRunner:
    """Executes one job and reports it through ``send`` (the agent's outbox).

    Message order: ``job.status running``; ``log.chunk`` index -1 for the checkout; per step
    ``step.status running``, its ``log.chunk``s, ``step.status`` terminal; ``job.status`` terminal.
    ``job.heartbeat`` is sent every ``job_heartbeat_interval_s`` while the job runs. ``cancel`` may be
    called at any time; a second call escalates to SIGKILL.

    ``release`` is called once, right before the terminal ``job.status`` is handed to ``send``: the
    agent frees the job's slot there, so an orchestrator that dispatches the next job as soon as it
    reads the status never finds the slot taken. The work directory outlives :meth:`run`; the caller
    removes it with :meth:`cleanup` after the slot is free.
    """

    def __init__(
        self, spec: JobSpec, *, config: AgentConfig, send: Send, release: Callable[[], None] | None = None
    ) -> None:
        self.spec = spec
        self._config = config
        self._send = send
        self._release = release
        self._released = False
        self.workspace: Path | None = None
        self.stop = StopRequest()
        self.done = anyio.Event()
        self.state: str | None = None
        self._grace = spec.grace_period_s if spec.grace_period_s is not None else config.grace_period_s
        self._log_cap = spec.max_log_bytes or config.max_log_bytes
        self._tg: TaskGroup | None = None

    def cancel(self, reason: str, *, force: bool = False) -> None:
        """Ask the job to stop: SIGTERM to the running step's process group, SIGKILL after the grace."""
        self.stop.cancel(reason, force=force)

    def _emit(self, kind: str, *, message_id: bool = True, **fields: JSONValue) -> None:
        self._send(
            job_mod.job_message(
                kind, self.spec, message_id=_new_id() if message_id else None, now_ms=_now_ms(), **fields
            )
        )

    def _chunk(self, step_index: int, lines: list[str]) -> None:
        self._emit("log.chunk", stepIndex=step_index, lines=lines)

    def _streamer(self, index: int) -> LogStreamer:
        streamer = LogStreamer(
            step_index=index,
            emit=self._chunk,
            max_bytes=self._log_cap,
            batch_lines=self._config.log_batch_lines,
            flush_interval_s=self._config.log_flush_interval_s,
        )
        assert self._tg is not None
        streamer.start(self._tg)
        return streamer

    def release(self) -> None:
        """Free the job's slot (once); also called when :meth:`run` ends without a terminal status."""
        if not self._released:
            self._released = True
            if self._release is not None:
                self._release()

    async def run(self) -> str:
        """Run the job to its terminal state and return it (``success``, ``failed`` or ``cancelled``).
        The slot is released before the terminal ``job.status`` is sent; the work directory is left for
        :meth:`cleanup`."""
        started = time.monotonic()
        self._emit("job.status", state="running")
        workspace = Path(tempfile.mkdtemp(prefix=f"job-{self.spec.job_id[:8]}-", dir=self._config.work_dir))
        self.workspace = workspace
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._heartbeats)
                state, error, results = await self._execute(workspace)
                tg.cancel_scope.cancel()
            data: dict[str, JSONValue] = {
                "durationMs": int((time.monotonic() - started) * 1000),
                "stepResults": results,
            }
            if error:
                data["error"] = error
            self.state = state
            self.release()
            self._emit("job.status", state=state, data=data)
        finally:
            self.release()
            self.done.set()
        return state

    async def cleanup(self, limiter: anyio.CapacityLimiter | None = None) -> None:
        """Remove the work directory (in a worker thread, at most ``limiter``'s count at a time). Shielded
        from cancellation, so a stopping agent leaves no workspace behind."""
        workspace, self.workspace = self.workspace, None
        if workspace is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(workspace, ignore_errors=True), limiter=limiter)

    async def _heartbeats(self) -> None:
        while True:
            await anyio.sleep(self._config.job_heartbeat_interval_s)
            self._emit("job.heartbeat", message_id=False)

    def _env(self, workspace: Path, step: StepSpec | None) -> dict[str, str]:
        env = dict(self._config.step_env)
        env.update(
            {
                "CI": "true",
                "KICI": "true",
                "KICI_RUN_ID": self.spec.run_id,
                "KICI_JOB_ID": self.spec.job_id,
                "KICI_JOB_NAME": self.spec.name,
                "KICI_REF": self.spec.ref,
                "KICI_SHA": self.spec.sha,
                "KICI_WORKSPACE": str(workspace),
            }
        )
        if self.spec.event is not None:  # the triggering event, for steps that read it (schedule, inputs, ...)
            env["KICI_EVENT_PATH"] = str(workspace / "event.json")
            env["KICI_EVENT_TYPE"] = str(self.spec.event.get("type") or "")
        env.update(self.spec.env)
        if step is not None:
            env.update(step.env)
        return env

    async def _execute(self, workspace: Path) -> tuple[str, str | None, list[JSONValue]]:
        spec = self.spec
        deadline = anyio.current_time() + spec.timeout_ms / 1000 if spec.timeout_ms else None
        repo = workspace / "repo"
        results: list[JSONValue] = []
        if self.stop.requested.is_set():
            return "cancelled", self.stop.reason, results
        if spec.event is not None:
            (workspace / "event.json").write_text(json.dumps(spec.event))
        setup = self._streamer(-1)
        try:
            if not (spec.checkout and spec.repo_url):
                repo.mkdir()
                setup.line("Checkout skipped")
            elif spec.ssh_auth:
                raise checkout_mod.CheckoutError("ssh source auth is not supported by this agent")
            else:
                await checkout_mod.checkout(
                    checkout_mod.CheckoutRequest(
                        repo_url=spec.repo_url,
                        ref=spec.ref,
                        sha=spec.sha,
                        basic_user=spec.basic_user,
                        basic_secret=spec.basic_secret,
                    ),
                    dest=repo,
                    base_env=self._config.step_env,
                    log=setup.line,
                    on_output=setup.feed,
                    stop=self.stop,
                    deadline=deadline,
                    grace_s=self._grace,
                )
        except checkout_mod.CheckoutError as exc:
            setup.line(f"Checkout failed: {exc}")
            setup.close()
            return "failed", f"Checkout failed: {exc}", results
        except checkout_mod.CheckoutStopped as exc:
            setup.close()
            if exc.result.stopped_by == "cancel":
                return "cancelled", self.stop.reason, results
            return "failed", f"Job timed out after {spec.timeout_ms} ms", results
        setup.close()

        halt: tuple[str, str] | None = None
        for step in spec.steps:
            if halt is None and self.stop.requested.is_set():
                halt = ("cancelled", self.stop.reason)
            if halt is None and deadline is not None and anyio.current_time() >= deadline:
                halt = ("failed", f"Job timed out after {spec.timeout_ms} ms")
            if halt is not None:
                self._emit(
                    "step.status", stepIndex=step.index, stepName=step.name, state="skipped", data={"step_type": "step"}
                )
                results.append({"name": step.name, "status": "skipped", "durationMs": 0})
                continue
            state, step_error, job_timed_out = await self._run_step(step, repo, workspace, deadline, results)
            if state == "cancelled":
                halt = ("cancelled", self.stop.reason)
            elif job_timed_out:
                halt = ("failed", f"Job timed out after {spec.timeout_ms} ms")
            elif state == "failed" and not step.continue_on_error:
                halt = ("failed", f"Step '{step.name}' failed: {step_error}")
        if halt is not None:
            return halt[0], halt[1], results
        return "success", None, results

    def _resolve_cwd(self, step: StepSpec, repo: Path) -> Path:
        if step.working_directory is None:
            return repo
        target = (repo / step.working_directory).resolve()
        root = repo.resolve()
        if Path(step.working_directory).is_absolute() or (target != root and root not in target.parents):
            raise ValueError(f"workingDirectory {step.working_directory!r} is outside the checkout")
        if not target.is_dir():
            raise ValueError(f"workingDirectory {step.working_directory!r} does not exist")
        return target

    async def _run_step(
        self,
        step: StepSpec,
        repo: Path,
        workspace: Path,
        job_deadline: float | None,
        results: list[JSONValue],
    ) -> tuple[str, str | None, bool]:
        """Run one step; returns ``(state, error, whether the job deadline expired)``."""
        self._emit("step.status", stepIndex=step.index, stepName=step.name, state="running", data={"step_type": "step"})
        started = time.monotonic()
        streamer = self._streamer(step.index)
        state, error, job_timed_out = "failed", None, False
        result: ProcessResult | None = None
        try:
            if step.invalid is not None or step.run is None:
                error = step.invalid or UNSUPPORTED_STEP
                streamer.line(error)
            else:
                cwd = self._resolve_cwd(step, repo)
                deadline = job_deadline
                step_deadline = anyio.current_time() + step.timeout_ms / 1000 if step.timeout_ms else None
                if step_deadline is not None and (deadline is None or step_deadline < deadline):
                    deadline = step_deadline
                result = await process.run_process(
                    ["bash", "-e", "-o", "pipefail", "-c", step.run],
                    cwd=cwd,
                    env=self._env(workspace, step),
                    on_output=streamer.feed,
                    stop=self.stop,
                    deadline=deadline,
                    grace_s=self._grace,
                )
                state, error, job_timed_out = self._classify(result, step, job_deadline, step_deadline)
        except (ValueError, OSError) as exc:
            error = str(exc)
            streamer.line(error)
        streamer.close()
        duration = int((time.monotonic() - started) * 1000)
        data: dict[str, JSONValue] = {"durationMs": duration, "step_type": "step"}
        if result is not None:
            if result.exit_code is not None:
                data["exitCode"] = result.exit_code
            if result.signal is not None:
                data["signal"] = result.signal
        if error:
            data["error"] = error
        self._emit(
            "step.status",
            stepIndex=step.index,
            stepName=step.name,
            state=state,
            data=data,
            logBytesStreamed=streamer.bytes_streamed,
        )
        entry: dict[str, JSONValue] = {"name": step.name, "status": state, "durationMs": duration}
        if error:
            entry["error"] = error
        results.append(entry)
        return state, error, job_timed_out

    def _classify(
        self, result: ProcessResult, step: StepSpec, job_deadline: float | None, step_deadline: float | None
    ) -> tuple[str, str | None, bool]:
        if result.stopped_by == "cancel":
            return "cancelled", self.stop.reason, False
        if result.stopped_by == "timeout":
            job_expired = job_deadline is not None and (step_deadline is None or job_deadline <= step_deadline)
            if job_expired:
                return "failed", f"Job timed out after {self.spec.timeout_ms} ms", True
            return "failed", f"step timed out after {step.timeout_ms} ms", False
        if result.exit_code == 0:
            return "success", None, False
        if result.exit_code is not None:
            return "failed", f"exit code {result.exit_code}", False
        return "failed", f"killed by {result.signal}", False
