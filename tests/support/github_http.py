"""The HTTP side of the local GitHub API server: a quiet threading server and the request handler."""

from __future__ import annotations

import email.utils
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from tests.support.github_model import RecordedRequest, Reply

if TYPE_CHECKING:
    from tests.support.github_server import GitHubServer


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are part of the tests


class Handler(BaseHTTPRequestHandler):
    gh: GitHubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # never echo requests (they carry tokens)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(self.gh.clock() if timestamp is None else timestamp, usegmt=True)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        gh = self.gh
        split = urlsplit(self.path)
        path = split.path
        if gh.prefix:
            if not path.startswith(gh.prefix + "/"):
                self._send(Reply(404, {"message": "Not Found"}))
                return
            path = path[len(gh.prefix) :]
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        query = dict(parse_qsl(split.query))
        with gh._lock:
            gh.requests.append(RecordedRequest(self.command, path, query, headers, body))
        fault = gh._take_fault(path)
        if fault is not None:
            if fault.delay:
                gh._closing.wait(fault.delay)
            if fault.drop:
                self.close_connection = True
                return
            if fault.status is not None:
                self._send(Reply(fault.status, {"message": fault.message or f"injected {fault.status}"}, fault.headers))
                return
        try:
            reply = gh._dispatch(self.command, path, query, headers, body)
        except Reply as err:
            reply = err
        except Exception as exc:  # a bug in this server: answer 500 and keep it for the test to see
            with gh._lock:
                gh.errors.append(exc)
            reply = Reply(500, {"message": f"test server error: {type(exc).__name__}"})
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = reply.body if reply.raw else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            if "content-type" not in {k.lower() for k in reply.headers}:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
