"""The recording side of ``bench/webhook_path.py``: the profile hook its child process runs.

:class:`Recorder` records every call of one of our functions (modules under ``kici_core``, ``kici_adapters`` and
``kici_runtime``) between SIGUSR1 and SIGUSR2: the function, the nearest calling function of ours, and the asyncio
task (or thread) that ran it, and dumps each window as JSON; :func:`run_program` runs a console script under it.
"""

from __future__ import annotations

import asyncio
import dis
import json
import os
import signal
import sys
import threading
import time
import types
import weakref
from pathlib import Path
from typing import Any

LAYERS = ("kici_core", "kici_adapters", "kici_runtime")
MARK = "webhook-path:"
_GEN_FLAGS = 0x20 | 0x80 | 0x100 | 0x200  # generator, coroutine, iterable coroutine, async generator
_SKIPPED = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<module>")
_BOUNDARIES = frozenset(
    {"asyncio.events", "asyncio.base_events", "asyncio.runners", "threading", "concurrent.futures.thread"}
)
"""Modules whose frames sit between an event loop (or a thread's start) and the code it runs."""


def _written(code: types.CodeType) -> bool:
    """A function written in a source file: not a comprehension or module body, not generated (dataclass
    ``__init__``/``__eq__``/``__hash__`` come from ``exec`` and have no file)."""
    return code.co_name not in _SKIPPED and code.co_filename.endswith(".py")


class Recorder:
    """The profile hook of the child process: records calls of our functions between SIGUSR1 and SIGUSR2."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.on = False
        self.window = 0
        self.started = 0.0
        self.keys: dict[tuple[str, str], int] = {}
        self.calls: list[tuple[float, int, int, int]] = []  # (time, context, function, caller function or -1)
        self.contexts: dict[int, dict[str, str]] = {}
        self._serials: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
        self._threads: dict[int, int] = {}
        self._next = 0
        self._first_resume: dict[types.CodeType, int] = {}

    def _key(self, frame: types.FrameType) -> int:
        code = frame.f_code
        key = (str(frame.f_globals.get("__name__")), code.co_qualname)
        index = self.keys.get(key)
        if index is None:
            index = self.keys[key] = len(self.keys)
        return index

    def _fresh(self, frame: types.FrameType) -> bool:
        """False when a generator or coroutine frame resumes (the profile hook reports those as calls too)."""
        code = frame.f_code
        if not code.co_flags & _GEN_FLAGS:
            return True
        start = self._first_resume.get(code)
        if start is None:
            start = next((i.offset for i in dis.get_instructions(code) if i.opname == "RESUME"), 0)
            self._first_resume[code] = start
        return frame.f_lasti <= start

    def _context(self) -> int:
        task = None
        loop = asyncio._get_running_loop()
        if loop is not None:
            task = asyncio.current_task(loop)
        if task is not None:
            serial = self._serials.get(task)
            if serial is None:
                serial = self._serials[task] = self._new_context("task", task.get_name())
            return serial
        ident = threading.get_ident()
        serial = self._threads.get(ident)
        if serial is None:
            kind = "loop callback" if loop is not None else "thread"
            serial = self._threads[ident] = self._new_context(kind, threading.current_thread().name)
        return serial

    def _new_context(self, kind: str, name: str) -> int:
        self._next += 1
        self.contexts[self._next] = {"kind": kind, "name": name}
        return self._next

    def profile(self, frame: types.FrameType, event: str, arg: object) -> None:
        if event != "call" or not self.on:
            return
        name = frame.f_globals.get("__name__")
        if not isinstance(name, str) or name.partition(".")[0] not in LAYERS or not _written(frame.f_code):
            return
        if not self._fresh(frame):
            return
        caller = -1
        back = frame.f_back
        while back is not None:
            back_name = back.f_globals.get("__name__")
            if not isinstance(back_name, str) or back_name in _BOUNDARIES:
                break  # a task step, a loop callback or a thread starts here: no caller of ours below
            if back_name.partition(".")[0] in LAYERS and _written(back.f_code):
                caller = self._key(back)
                break
            back = back.f_back
        self.calls.append((time.perf_counter() - self.started, self._context(), self._key(frame), caller))

    def start(self, signum: int, frame: types.FrameType | None) -> None:
        self.window += 1
        self.calls = []
        self.started = time.perf_counter()
        self.on = True
        sys.setprofile(self.profile)  # the loop's thread; other threads got the hook when they started
        os.write(2, f"{MARK} recording {self.window}\n".encode())

    def stop(self, signum: int, frame: types.FrameType | None) -> None:
        self.on = False
        sys.setprofile(None)
        duration = time.perf_counter() - self.started
        names = sorted(self.keys.items(), key=lambda kv: kv[1])
        dump = {
            "window": self.window,
            "duration": duration,
            "functions": [list(k) for k, _ in names],
            "contexts": {str(k): v for k, v in self.contexts.items()},
            "calls": self.calls,
        }
        path = self.out_dir / f"window-{self.window}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dump))
        tmp.replace(path)
        os.write(2, f"{MARK} stopped {self.window}\n".encode())


def run_program(name: str, args: list[str], record_to: str | None) -> None:
    """Run the console script ``name`` in this process, recording our calls when ``record_to`` is given."""
    from importlib.metadata import entry_points

    found = entry_points(group="console_scripts", name=name)
    if not found:
        sys.exit(f"no console script named {name}: is the project installed (make install)?")
    main = next(iter(found)).load()
    if record_to is not None:
        recorder = Recorder(Path(record_to))
        threading.setprofile(recorder.profile)
        signal.signal(signal.SIGUSR1, recorder.start)
        signal.signal(signal.SIGUSR2, recorder.stop)
    sys.argv = [name, *args]
    main()
