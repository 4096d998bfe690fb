"""Run ``kici-standalone`` / ``kici-server`` as a real subprocess, and ``kici-admin`` against it.

:class:`OrchestratorProcess` starts the console script with a given environment on ``KICI_PORT=0`` (the
server picks a free loopback port), waits for its ``started on port <n>`` log line and reads the port from it.
It can be stopped cleanly (SIGTERM, the exit code is checked), killed outright (SIGKILL, for crash tests) and
started again on the same environment. Log lines are kept in :attr:`OrchestratorProcess.lines` for failure
messages. Everything is synchronous (threads pump the output), so module-scoped fixtures can use it; async
tests call :meth:`OrchestratorProcess.start` through ``anyio.to_thread.run_sync``.

:func:`kici_admin` runs the ``kici-admin`` console script against a running orchestrator.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio

BIN = Path(sys.executable).parent
STARTED = re.compile(r"started on port (\d+)")
BOUND = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any ``KICI_*`` or ``GITHUB_API_URL`` value, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("KICI_") and k != "GITHUB_API_URL"}
    return {**base, **extra}


@dataclass
class OrchestratorProcess:
    """One orchestrator console script (``kici-standalone`` or ``kici-server``) run as a subprocess.

    Args:
        command: the console script name, looked up next to the test interpreter.
        env: the full environment of the process; ``KICI_PORT`` defaults to ``0`` and ``KICI_HOST`` to
            ``127.0.0.1``.
    """

    command: str
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _started: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pump_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running process."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, bound: float = BOUND) -> OrchestratorProcess:
        """Start the process and wait for its ``started on port`` line.

        Raises:
            AssertionError: the process exited or did not announce itself within ``bound`` seconds.
        """
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {"KICI_PORT": "0", "KICI_HOST": "127.0.0.1", **self.env}
        self._started = threading.Event()
        first_line = len(self.lines)
        # its own session and process group, like a program started from a terminal: ``interrupt`` can then
        # signal the whole group as a terminal's Ctrl-C does
        self.proc = subprocess.Popen(
            [str(BIN / self.command)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._pump_thread = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._pump_thread.start()
        if not self._started.wait(bound):
            self.kill()
            raise AssertionError(f"{self.command} did not start within {bound} s:\n{self.tail()}")
        with self._lock:
            found = [STARTED.search(line) for line in self.lines[first_line:]]
        ports = [int(m.group(1)) for m in found if m]
        if not ports:
            self.proc.wait(bound)
            raise AssertionError(f"{self.command} exited with {self.proc.returncode}:\n{self.tail()}")
        self.port = ports[0]
        return self

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            if STARTED.search(line):
                self._started.set()
        self._started.set()  # exited: stop waiting

    def tail(self, n: int = 40) -> str:
        """The last ``n`` log lines."""
        with self._lock:
            return "\n".join(self.lines[-n:])

    def log_count(self, text: str) -> int:
        """How many log lines so far contain ``text``."""
        with self._lock:
            return sum(text in line for line in self.lines)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (no clean shutdown) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(BOUND)
        self._join()

    def stop(self, bound: float = BOUND) -> int:
        """SIGTERM, wait for the exit and return the exit code (0 or -SIGTERM for a clean stop)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.command} did not stop within {bound} s:\n{self.tail()}") from None
        self._join()
        return code

    def interrupt(self, bound: float = BOUND) -> int:
        """Ctrl-C as a terminal sends it (SIGINT to the whole process group), wait and return the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            code = self.proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.command} did not stop within {bound} s of Ctrl-C:\n{self.tail()}") from None
        self._join()
        return code

    def _join(self) -> None:
        if self._pump_thread is not None:
            self._pump_thread.join(BOUND)
            self._pump_thread = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True)
class AdminResult:
    """What one ``kici-admin`` invocation printed."""

    code: int
    stdout: str
    stderr: str


async def kici_admin(
    url: str, token: str, *args: str, env: Mapping[str, str] | None = None, check: bool = True
) -> AdminResult:
    """Run ``kici-admin --url <url> <args...>`` with ``KICI_ADMIN_TOKEN=<token>`` and return its output.

    Raises:
        AssertionError: ``check`` is set and the command exited non-zero.
    """
    full_env = clean_env(KICI_ADMIN_TOKEN=token, **(env or {}))
    result = await anyio.run_process([str(BIN / "kici-admin"), "--url", url, *args], env=full_env, check=False)
    out = AdminResult(result.returncode, result.stdout.decode(), result.stderr.decode())
    if check and out.code != 0:
        raise AssertionError(f"kici-admin {' '.join(args)} exited {out.code}:\n{out.stdout}\n{out.stderr}")
    return out
