"""Delivery processing in child processes (``KICI_PROCESSING_WORKERS``).

With N >= 1 the serving process keeps webhook intake and agent dispatch on its own event loop and starts N
children (``python -m kici_runtime.orchestrator.processing``) that only process deliveries: the delivery worker and the
payload offloader, no HTTP and no agent sockets. The processes share one PostgreSQL (ARCHITECTURE §1): inbox
claims are leases taken with ``SKIP LOCKED``, completion notifies ``kici_jobs`` for the dispatcher, and each
child claims under a stable id (``<instance id>/processing-<index>``), so a restarted child frees the leases
its predecessor held.

Wake-ups cross the process boundary as ``NOTIFY kici_inbox``: ``InboxNotifier`` (``kici_adapters.postgres.notify``)
runs in the serving process and sends one notification per burst of acceptances (a group-commit batch wakes it
once; acceptances arriving while a notification is in flight are covered by the next one); :func:`listen_inbox`
runs in each child. The worker's poll interval remains the fallback when a notification is lost.

:class:`Supervisor` starts the children, restarts one that dies (with backoff) and, when cancelled, stops them
with SIGTERM (SIGKILL after a grace period) before the serving process goes on to exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Literal, cast

import anyio
import anyio.abc

from kici_adapters import metrics
from kici_adapters.postgres import notify
from kici_adapters.postgres.pool import Database
from kici_core import errors
from kici_runtime import logging as kici_logging
from kici_runtime import wirelogs
from kici_runtime.config import settings as config
from kici_runtime.config.settings import Settings
from kici_runtime.orchestrator import components, eventloop, heap

log = logging.getLogger("kici.processing")

STOP_GRACE_SECONDS = 30.0
"""How long a child gets to finish after SIGTERM before it is killed."""
BEAT_SECONDS = 1.0
"""How often a child touches its heartbeat file."""
RESTART_BACKOFF_MAX = 30.0
"""Largest delay before restarting a child that died; the first is ``KICI_PROCESSING_RESTART_DELAY_MS`` and it
doubles per quick death."""
STABLE_SECONDS = 60.0
"""A child that ran this long before dying is restarted after the first delay again."""
CHILD_NICENESS = 5
"""Scheduling priority a child lowers itself by: when the CPUs are busy, webhook acceptance and dispatch in the
serving process go first (a delivery accepted is durable; processing it a little later loses nothing)."""


def child_worker_id(instance_id: str, index: int) -> str:
    """The inbox worker id of processing child ``index``: stable across restarts of that child."""
    return f"{instance_id}/processing-{index}"


async def listen_inbox(db: Database, wake: Callable[[], None], *, retry_seconds: float = 1.0) -> None:
    """Call ``wake`` for every ``kici_inbox`` notification, and once per (re)connection (notifications may
    have been missed while disconnected). Runs until cancelled."""
    async for _ in notify.listen_forever(db, (notify.INBOX,), retry_seconds=retry_seconds, what="inbox notifications"):
        wake()


class Supervisor:
    """Runs ``settings.processing_workers`` processing children and keeps them running.

    Args:
        settings: the serving process's settings (entry point, config file, worker count).
        database_url: the database the serving process uses (an embedded one is reached by URL).
        environ: the children's base environment (the serving process's own by default).
    """

    def __init__(self, settings: Settings, *, database_url: str, environ: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._count = settings.processing_workers
        base = dict(os.environ if environ is None else environ)
        # The children use the serving process's database as is, and never migrate it.
        self._env = {**base, "KICI_DATABASE_URL": database_url, "KICI_AUTO_MIGRATE": "false"}
        if settings.secret_key_generated:  # KICI_DEV's ephemeral key: the children must decrypt with the same one
            self._env["KICI_SECRET_KEY"] = settings.secret_key.hex()
        self.pids: dict[int, int] = {}
        """Current child pid per index."""
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="kici-metrics-"))
        self._retired: dict[str, float] = {}  # counters of children that exited, summed
        self.starts = 0
        """Children started so far, restarts included."""
        self._stall_seconds = float(max(settings.processing_timeout_seconds, 2 * BEAT_SECONDS + 1))
        self._first_delay = settings.processing_restart_delay_ms / 1000

    def command(self, index: int) -> list[str]:
        """The command line of child ``index``."""
        cmd = [
            sys.executable,
            "-m",
            "kici_runtime.orchestrator.processing",
            "--index",
            str(index),
            "--entry-point",
            self._settings.entry_point,
        ]
        if self._settings.config_file:
            cmd += ["--config", self._settings.config_file]
        return [*cmd, "--metrics-file", str(self._metrics_file(index))]

    def _metrics_file(self, index: int) -> Path:
        return self._metrics_dir / f"child-{index}.json"

    def metric_snapshots(self) -> list[dict[str, float]]:
        """Counter and histogram samples of the children (those running, and those that exited since start),
        for ``GET /metrics`` of the serving process to add to its own."""
        return [self._retired, *(snap for i in range(self._count) if (snap := _read_snapshot(self._metrics_file(i))))]

    def _retire(self, index: int) -> None:
        """Fold an exited child's last counters into the retired totals (its successor starts from zero)."""
        path = self._metrics_file(index)
        for key, value in _read_snapshot(path).items():
            self._retired[key] = self._retired.get(key, 0.0) + value
        path.unlink(missing_ok=True)

    async def run(self) -> None:
        """Start every child and restart those that die, until cancelled (which stops them all)."""
        try:
            async with anyio.create_task_group() as tg:
                for index in range(self._count):
                    tg.start_soon(self._keep, index)
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _watch(self, index: int, proc: anyio.abc.Process) -> int:
        """Wait for the child to exit; kill it first if its event loop stopped turning for longer than a delivery's
        whole time budget. Returns its exit code.

        Matching and planning run in a worker thread and are checked against the budget between steps; but one
        long call into C that never lets the interpreter switch threads (a backtracking ``re`` search that the
        ReDoS guard could not rule out, say) freezes the whole child. Its heartbeat then stops; the child is
        killed and restarted, and the deliveries it held count a crash each (parked after three: poison pill).
        """
        path = anyio.Path(heartbeat_file(self._metrics_file(index)))
        with suppress(OSError):
            await path.unlink()
        while True:
            with anyio.move_on_after(BEAT_SECONDS):
                return await proc.wait()
            try:
                age = time.time() - (await path.stat()).st_mtime
            except OSError:
                continue  # not started yet
            if age > self._stall_seconds:
                log.error(
                    "Processing worker stalled: its event loop has not run for %.0f s (more than the time "
                    "budget of a delivery); killing it",
                    age,
                    extra={"index": index, "pid": proc.pid, "stalledSeconds": round(age, 1)},
                )
                with suppress(ProcessLookupError):
                    proc.kill()
                return await proc.wait()

    async def _keep(self, index: int) -> None:
        delay = self._first_delay
        while True:
            started = time.monotonic()
            # A session of its own: a terminal's Ctrl-C (SIGINT to the foreground process group) reaches only
            # the serving process, which stops its children once, in order; a child never stops on its own.
            proc = await anyio.open_process(
                self.command(index),
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                start_new_session=True,
            )
            self.pids[index] = proc.pid
            self.starts += 1
            log.info("Processing worker started", extra={"index": index, "pid": proc.pid})
            try:
                code = await self._watch(index, proc)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _stop(proc)
                raise
            finally:
                self.pids.pop(index, None)
                self._retire(index)
            if time.monotonic() - started >= STABLE_SECONDS:
                delay = self._first_delay
            log.warning(
                "Processing worker exited; restarting it",
                extra={"index": index, "exitCode": code, "restartInSeconds": delay},
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, max(self._first_delay, RESTART_BACKOFF_MAX))


async def _stop(proc: anyio.abc.Process) -> None:
    """SIGTERM, then SIGKILL after the grace period; returns once the child is reaped."""
    if proc.returncode is None:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass
        with anyio.move_on_after(STOP_GRACE_SECONDS):
            await proc.wait()
        if proc.returncode is None:
            log.warning("Processing worker did not stop in time; killing it", extra={"pid": proc.pid})
            proc.kill()
            await proc.wait()
    await proc.aclose()


def _read_snapshot(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------ child side
async def report_metrics(path: Path, *, every: float = 0.25) -> None:
    """Write this process's counters to ``path`` (atomically) every ``every`` seconds while they change, and once
    more when cancelled, for the serving process's ``GET /metrics``."""

    def write(snap: dict[str, float]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(snap))
        os.replace(tmp, path)

    last: dict[str, float] | None = None
    try:
        while True:
            snap = metrics.snapshot()
            if snap != last:
                write(snap)
                last = snap
            await anyio.sleep(every)
    finally:
        with suppress(OSError):
            write(metrics.snapshot())


def heartbeat_file(metrics_file: Path) -> Path:
    """The file a child touches every :data:`BEAT_SECONDS` while its event loop runs."""
    return metrics_file.with_suffix(".alive")


async def beat(path: Path) -> None:
    """Touch ``path`` every :data:`BEAT_SECONDS`: the serving process's watchdog reads its age (see
    :meth:`Supervisor._watch`)."""
    alive = anyio.Path(path)
    while True:
        with suppress(OSError):
            await alive.touch()
        await anyio.sleep(BEAT_SECONDS)


async def run_child(settings: Settings, index: int, *, parent_pid: int, metrics_file: Path | None = None) -> None:
    """The body of a processing child: worker, offloader and the inbox listener, until SIGTERM/SIGINT or
    until the serving process is gone."""
    if settings.database_url is None:
        raise errors.ConfigError("a processing worker needs KICI_DATABASE_URL (set by the serving process)")
    url = settings.database_url.reveal()
    async with AsyncExitStack() as stack:
        db = Database(url)
        await db.open()
        stack.push_async_callback(db.close)
        worker_id = child_worker_id(components.instance_id(settings), index)
        parts = await components.processing_parts(settings, db, stack, worker_id=worker_id)

        def wake() -> None:
            parts.worker.wake()
            parts.offloader.wake()

        async with anyio.create_task_group() as tg:
            tg.start_soon(parts.worker.run)
            tg.start_soon(parts.offloader.run)
            tg.start_soon(listen_inbox, db, wake)
            if metrics_file is not None:
                tg.start_soon(report_metrics, metrics_file)
                tg.start_soon(beat, heartbeat_file(metrics_file))

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            async def watch_parent() -> None:
                while os.getppid() == parent_pid:  # noqa: ASYNC110 - nothing signals a parent's death
                    await anyio.sleep(1.0)
                log.warning("The serving process is gone; stopping")
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            tg.start_soon(watch_parent)
            heap.settle()
            log.info("Processing worker ready", extra={"workerId": worker_id})
    log.info("Processing worker stopped", extra={"workerId": worker_id})


def main(argv: list[str] | None = None) -> None:
    """``python -m kici_runtime.orchestrator.processing --index N``: run one processing child (started by the serving
    process, not by hand)."""
    parser = argparse.ArgumentParser(description="KiCI delivery-processing worker (started by the orchestrator)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--entry-point", choices=("server", "standalone"), default="standalone")
    parser.add_argument("--config", default=None)
    parser.add_argument("--metrics-file", default=None, help="where to leave counters for the serving process")
    args = parser.parse_args(argv)
    parent_pid = os.getppid()
    kici_logging.configure_logging("info")
    heap.configure()
    with suppress(OSError):
        os.nice(CHILD_NICENESS)
    try:
        settings = config.from_process_env(
            cast(Literal["server", "standalone"], args.entry_point), config_path=args.config
        )
    except errors.ConfigError as exc:
        kici_logging.log_fatal_startup(exc)
        sys.exit(1)
    kici_logging.register_secrets(settings.secret_values())
    kici_logging.configure_logging(settings.log_level, static_fields={"environment": settings.environment})
    wirelogs.install()
    try:
        anyio.run(
            functools.partial(
                run_child,
                settings,
                args.index,
                parent_pid=parent_pid,
                metrics_file=Path(args.metrics_file) if args.metrics_file else None,
            ),
            backend_options=eventloop.backend_options(),
        )
    except errors.KiciError as exc:
        kici_logging.log_fatal_startup(exc)
        sys.exit(exc.exit_code if exc.exit_code != 0 else 1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
