"""A small Chrome DevTools Protocol client over ``websockets``, driving a real headless Chromium.

:func:`chromium` starts Chromium (``$CHROMIUM_BINARY``, else Debian's ``/usr/lib/chromium/chromium``, else ``chromium``
on the path) headless with a fresh profile and
``--remote-debugging-port=0``, reads the DevTools address it prints, opens one page and yields a :class:`Page`
that can navigate, evaluate JavaScript, type, click, wait for a condition in the page (bounded, reporting
what it last saw) and take screenshots. Nothing is downloaded: the browser is the distribution's package.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect

__all__ = ["Page", "chromium", "chromium_path"]

BOUND = 30.0
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]
DEBIAN_BINARY = "/usr/lib/chromium/chromium"
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """The Chromium binary to use, or None when there is none."""
    configured = os.environ.get("CHROMIUM_BINARY")
    if configured:
        return configured
    if os.access(DEBIAN_BINARY, os.X_OK):  # skip Debian's shell wrapper and its /etc/chromium.d flags
        return DEBIAN_BINARY
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CDPError(Exception):
    """The browser answered a command with an error."""


class Page:
    """One browser tab, attached through a flat CDP session."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self._ws = ws
        self._session = session_id
        self._ids = itertools.count(1)
        self._waiting: dict[int, anyio.abc.ObjectSendStream[dict[str, Any]]] = {}
        self.console: list[str] = []
        self.errors: list[str] = []  # uncaught exceptions and CSP violations reported by the page

    async def _reader(self) -> None:
        async for raw in self._ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self._waiting:
                with self._waiting.pop(msg["id"]) as stream:
                    await stream.send(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                self.console.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"].get("args", []))
                )
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(msg["params"].get("exceptionDetails", {}))[:500])
            elif msg.get("method") == "Log.entryAdded":
                entry = msg["params"].get("entry", {})
                if entry.get("level") == "error":
                    self.errors.append(str(entry.get("text", ""))[:500])

    async def send(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> Any:
        """One CDP command; its result. Raises :class:`CDPError`."""
        msg_id = next(self._ids)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](1)
        self._waiting[msg_id] = send
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self._session
        with receive:
            await self._ws.send(json.dumps(message))
            with anyio.fail_after(BOUND):
                reply = await receive.receive()
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (awaiting promises) and return its JSON value."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    async def wait(
        self,
        expression: str,
        *,
        what: str,
        show: str = "document.body && document.body.innerText",
        limit: float = BOUND,
    ) -> None:
        """Poll ``expression`` until it is truthy in the page (the page gives the test no event to wait on). On
        timeout the error names ``what`` and what ``show`` evaluated to."""
        try:
            with anyio.fail_after(limit):
                # a page being replaced by a navigation may have no body yet: that is "not yet"
                probe = f"(() => {{ try {{ return Boolean({expression}); }} catch (e) {{ return false; }} }})()"
                while not await self.js(probe):  # noqa: ASYNC110 - state inside the browser
                    await anyio.sleep(0.1)
        except TimeoutError:
            seen = await self.js(f"(() => {{ try {{ return {show}; }} catch (e) {{ return String(e); }} }})()")
            raise AssertionError(f"timed out waiting for {what}; the page showed: {str(seen)[:2000]}") from None

    async def goto(self, url: str) -> None:
        """Navigate and wait until the document has loaded."""
        await self.send("Page.navigate", {"url": url})
        await self.wait(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            what=f"{url} loaded",
            show="location.href",
        )

    async def type(self, selector: str, text: str) -> None:
        """Focus ``selector`` and type ``text`` as keyboard input."""
        await self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", {"text": text})

    async def press(self, key: str, code: str, key_code: int, *, shift: bool = False) -> None:
        """Press and release one key (``Enter``, ``/`` ...) on the focused element."""
        base = {"key": key, "code": code, "windowsVirtualKeyCode": key_code, "modifiers": 8 if shift else 0}
        text = {"text": "\r" if key == "Enter" else key} if len(key) == 1 or key == "Enter" else {}
        await self.send("Input.dispatchKeyEvent", {"type": "keyDown", **base, **text})
        await self.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})

    async def click(self, selector: str) -> None:
        """Click the element (scrolled into view) at its centre with the mouse."""
        box = await self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        assert box, f"nothing matches {selector}"
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1}
            )

    async def screenshot(self, path: Path, *, full: bool = False) -> None:
        """Save a PNG of the viewport (or the whole page)."""
        params: dict[str, Any] = {"format": "png"}
        if full:
            size = await self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], 4000), "scale": 1},
            )
        data = (await self.send("Page.captureScreenshot", params))["data"]
        await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await anyio.Path(path).write_bytes(base64.b64decode(data))

    async def viewport(self, width: int, height: int, *, mobile: bool = False, dark: bool = False) -> None:
        """Emulate a screen size (a phone with ``mobile``) and the light or dark colour scheme."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        await self.send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]},
        )


@asynccontextmanager
async def chromium(*, width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium with one page; the process and its profile are removed on exit."""
    binary = chromium_path()
    assert binary, "Chromium is not installed (apt-get install chromium)"
    profile = tempfile.mkdtemp(prefix="kici-chromium-")
    args = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    # its stderr is read by a thread until the DevTools address appears
    proc = subprocess.Popen(  # noqa: ASYNC220
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stderr is not None
        url = await anyio.to_thread.run_sync(_devtools_url, proc)
        async with connect(url, max_size=64 * 1024 * 1024, ping_interval=None) as ws, anyio.create_task_group() as tg:
            page = Page(ws, "")
            tg.start_soon(page._reader)
            target = await page.send("Target.createTarget", {"url": "about:blank"}, browser=True)
            attached = await page.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, browser=True
            )
            page._session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await page.send(f"{domain}.enable")
            await page.viewport(width, height)
            try:
                yield page
            finally:
                tg.cancel_scope.cancel()
                for stream in page._waiting.values():
                    stream.close()
    finally:
        proc.kill()
        proc.wait(BOUND)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_url(proc: subprocess.Popen[bytes]) -> str:
    """Read Chromium's stderr until it prints its DevTools address (bounded by the process exiting)."""
    assert proc.stderr is not None
    seen = []
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        seen.append(line)
        found = _LISTENING.search(line)
        if found:
            threading_drain(proc)
            return found.group(1)
    raise AssertionError("Chromium exited before listening:\n" + "".join(seen[-20:]))


def threading_drain(proc: subprocess.Popen[bytes]) -> None:
    """Keep reading Chromium's stderr so a full pipe never blocks it."""
    import threading

    def drain() -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    threading.Thread(target=drain, daemon=True).start()
