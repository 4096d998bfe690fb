"""A local HTTP server that speaks the part of GitHub's REST API KiCI uses.

Usage::

    with GitHubServer() as gh:
        gh.add_app(123, public_pem)
        gh.add_installation(77, app_id=123, repos=["acme/app"])
        gh.put_file("acme/app", "main", ".kici/kici.lock.json", b"{...}")
        client = GitHubClient(api_url=gh.url)

Endpoints: ``GET /app``, ``GET /repos/{o}/{r}/installation``, ``POST /app/installations/{id}/access_tokens``
(App JWT, RS256, verified with the App's public key and the server clock), and with an installation token
``GET /repos/{o}/{r}/contents/{path}?ref=`` (raw or JSON media type), ``GET /repos/{o}/{r}/compare/{b}...{h}``,
``GET /repos/{o}/{r}/pulls/{n}/files?per_page=&page=`` (with ``Link`` headers) and the Checks API:
``POST /repos/{o}/{r}/check-runs``, ``PATCH``/``GET /repos/{o}/{r}/check-runs/{id}`` and
``GET /repos/{o}/{r}/commits/{ref}/check-runs?check_name=&filter=`` (validation errors answer 422 with
``message`` and ``errors`` like GitHub). :meth:`GitHubServer.check_runs` and :meth:`GitHubServer.check_history`
show what was created and every state each check run went through.

Fault injection: :meth:`GitHubServer.fail` (next N responses for a path get a status and headers),
:meth:`GitHubServer.delay` (hold the response, to trigger client timeouts) and :meth:`GitHubServer.drop`
(close the connection without answering). Every request is recorded in :attr:`GitHubServer.requests`.
The server never logs requests, so tokens and keys stay out of test output.

Keys, clocks and records live in :mod:`tests.support.github_model`, Checks API validation in
:mod:`tests.support.github_checks` and the HTTP handler in :mod:`tests.support.github_http`; this module
re-exports the public names.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import jwt

from tests.support.github_checks import CHECKS_DOCS, apply_check, check_body, public_run
from tests.support.github_http import Handler, QuietServer
from tests.support.github_model import (
    App,
    AppKey,
    Fault,
    Installation,
    ManualClock,
    RecordedRequest,
    RecordingSleep,
    Reply,
    Token,
    app_key,
)

__all__ = ["AppKey", "GitHubServer", "ManualClock", "RecordedRequest", "RecordingSleep", "app_key"]

_JWT_EXP_MESSAGE = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
    "the assertion expires"
)
_JWT_IAT_MESSAGE = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
_COMPARE_CAP = 300
_PR_FILES_CAP = 3000


class GitHubServer:
    """In-memory GitHub on ``127.0.0.1``; use as a context manager and read :attr:`url`.

    Args:
        prefix: path prefix of the API, e.g. ``/api/v3`` to look like GitHub Enterprise.
        clock: the server's notion of now (epoch seconds), for JWT checks and token expiry.
        token_ttl: lifetime of issued installation tokens, in seconds.
    """

    def __init__(self, *, prefix: str = "", clock: Callable[[], float] = time.time, token_ttl: float = 3600.0) -> None:
        self.prefix = prefix.rstrip("/")
        self.clock = clock
        self.token_ttl = token_ttl
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []  # unexpected exceptions inside the server
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._apps: dict[str, App] = {}
        self._installations: dict[int, Installation] = {}
        self._tokens: dict[str, Token] = {}
        self._files: dict[tuple[str, str, str], bytes] = {}
        self._branches: dict[tuple[str, str], str] = {}
        self._default_branch: dict[str, str] = {}
        self._compares: dict[tuple[str, str, str], list[str]] = {}
        self._pull_files: dict[tuple[str, int], list[str]] = {}
        self._faults: list[Fault] = []
        self._fault_hits: list[int] = []
        self._checks: dict[int, dict[str, Any]] = {}
        self._check_log: list[dict[str, Any]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> GitHubServer:
        """Bind ``127.0.0.1`` on a free port and serve in a background thread."""
        handler = type("_BoundHandler", (Handler,), {"gh": self})
        httpd = QuietServer(("127.0.0.1", 0), handler)
        self._httpd = httpd
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}{self.prefix}"
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; delayed responses are released at once."""
        self._closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> GitHubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ model
    def add_app(
        self,
        app_id: int | str,
        public_key_pem: bytes,
        *,
        slug: str = "kici-test",
        name: str = "KiCI Test",
        owner: str = "acme",
    ) -> None:
        """Register an App; its JWTs are verified with ``public_key_pem``."""
        with self._lock:
            self._apps[str(app_id)] = App(str(app_id), public_key_pem, slug, name, owner)

    def add_installation(self, installation_id: int, *, app_id: int | str, repos: Iterable[str]) -> None:
        """Install App ``app_id`` on ``repos`` (``owner/name``)."""
        with self._lock:
            self._installations[installation_id] = Installation(installation_id, str(app_id), set(repos))

    def remove_installation(self, installation_id: int) -> None:
        """Uninstall; its tokens stop working."""
        with self._lock:
            self._installations.pop(installation_id, None)
            for tok in [t for t, v in self._tokens.items() if v.installation_id == installation_id]:
                del self._tokens[tok]

    def put_file(self, repo: str, ref: str, path: str, content: bytes) -> None:
        """Store ``content`` at ``path`` for ``ref`` (a SHA or a branch name)."""
        with self._lock:
            self._files[(repo, ref, path)] = content

    def set_branch(self, repo: str, branch: str, sha: str, *, default: bool = False) -> None:
        """Point ``branch`` at ``sha`` (lookups by branch then read the SHA's files)."""
        with self._lock:
            self._branches[(repo, branch)] = sha
            if default:
                self._default_branch[repo] = branch

    def set_compare(self, repo: str, base: str, head: str, files: Iterable[str]) -> None:
        """The file list of ``compare/base...head`` (truncated to 300 like GitHub)."""
        with self._lock:
            self._compares[(repo, base, head)] = list(files)

    def set_pull_files(self, repo: str, number: int, files: Iterable[str]) -> None:
        """The files of pull request ``number`` (listed up to 3,000 like GitHub)."""
        with self._lock:
            self._pull_files[(repo, number)] = list(files)

    def check_runs(self, repo: str, sha: str | None = None) -> list[dict[str, Any]]:
        """Every check run created on ``repo`` (at ``sha``), oldest first (copies)."""
        with self._lock:
            return [
                json.loads(json.dumps(c))
                for c in self._checks.values()
                if c["repo"] == repo and (sha is None or c["head_sha"] == sha)
            ]

    def check_history(self, repo: str, name: str | None = None) -> list[dict[str, Any]]:
        """Each accepted create or update of a check run on ``repo`` (named ``name``), in arrival order: the
        check run as it was right after that request (copies)."""
        with self._lock:
            return [
                json.loads(json.dumps(c))
                for c in self._check_log
                if c["repo"] == repo and (name is None or c["name"] == name)
            ]

    # ------------------------------------------------------------------ faults
    def fail(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        """The next ``times`` requests whose path matches ``path`` (fnmatch) answer ``status``."""
        with self._lock:
            self._faults.append(Fault(path, times, status=status, headers=dict(headers or {}), message=message))

    def delay(self, path: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` matching responses for ``seconds`` (released early by :meth:`close`)."""
        with self._lock:
            self._faults.append(Fault(path, times, delay=seconds))

    def drop(self, path: str, *, times: int = 1) -> None:
        """Close the connection without a response for the next ``times`` matching requests."""
        with self._lock:
            self._faults.append(Fault(path, times, drop=True))

    def clear_faults(self) -> None:
        """Forget the faults not used up yet."""
        with self._lock:
            self._faults.clear()

    def fault_hits(self, status: int) -> int:
        """How many responses so far were injected faults with ``status``."""
        with self._lock:
            return self._fault_hits.count(status)

    def requests_for(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path matches ``path`` (fnmatch), optionally of one method."""
        with self._lock:
            return [
                r for r in self.requests if fnmatch.fnmatchcase(r.path, path) and (method is None or r.method == method)
            ]

    @property
    def tokens_issued(self) -> int:
        """How many installation tokens were minted so far."""
        return len(self.requests_for("/app/installations/*/access_tokens", "POST"))

    # ------------------------------------------------------------------ request handling (server thread)
    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fnmatch.fnmatchcase(path, fault.pattern):
                    fault.remaining -= 1
                    if fault.status is not None:
                        self._fault_hits.append(fault.status)
                    return fault
        return None

    def _now(self) -> float:
        return self.clock()

    def _check_jwt(self, headers: Mapping[str, str]) -> App:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise Reply(401, {"message": "A JSON web token could not be decoded"})
        token = auth[len("Bearer ") :]
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Reply(401, {"message": "A JSON web token could not be decoded"}) from None
        with self._lock:
            app = self._apps.get(str(unverified.get("iss")))
        if app is None:
            raise Reply(401, {"message": "Integration not found"})
        try:
            claims = jwt.decode(
                token, app.public_key, algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False}
            )
        except jwt.PyJWTError:
            raise Reply(401, {"message": "A JSON web token could not be decoded"}) from None
        now = self._now()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or iat > now + 60:
            raise Reply(401, {"message": _JWT_IAT_MESSAGE})
        if not isinstance(exp, int) or exp <= now or exp > now + 600 or exp - iat > 600:
            raise Reply(401, {"message": _JWT_EXP_MESSAGE})
        return app

    def _check_token(self, headers: Mapping[str, str], repo: str) -> Installation:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        with self._lock:
            tok = self._tokens.get(value) if scheme in ("token", "Bearer") else None
            if tok is None or tok.expires_at <= self._now():
                raise Reply(401, {"message": "Bad credentials"})
            inst = self._installations.get(tok.installation_id)
            if inst is None or repo not in inst.repos:
                raise Reply(404, {"message": "Not Found"})
            return inst

    def _dispatch(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "GET" and parts == ["app"]:
            app = self._check_jwt(headers)
            return Reply(
                200, {"id": int(app.app_id), "slug": app.slug, "name": app.name, "owner": {"login": app.owner}}
            )
        if (
            method == "POST"
            and len(parts) == 4
            and parts[:2] == ["app", "installations"]
            and parts[3] == "access_tokens"
        ):
            return self._mint(self._check_jwt(headers), parts[2])
        if len(parts) < 3 or parts[0] != "repos":
            raise Reply(404, {"message": "Not Found"})
        repo, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        if rest[:1] == ["check-runs"] or (rest[:1] == ["commits"] and rest[2:] == ["check-runs"]):
            return self._checks_api(method, repo, rest, query, self._check_token(headers, repo), body)
        if method != "GET":
            raise Reply(404, {"message": "Not Found"})
        if rest == ["installation"]:
            app = self._check_jwt(headers)
            with self._lock:
                for inst in self._installations.values():
                    if inst.app_id == app.app_id and repo in inst.repos:
                        return Reply(
                            200, {"id": inst.installation_id, "app_id": int(app.app_id), "account": {"login": parts[1]}}
                        )
            raise Reply(404, {"message": "Not Found"})
        self._check_token(headers, repo)
        if rest[:1] == ["contents"] and len(rest) > 1:
            return self._contents(repo, "/".join(rest[1:]), query.get("ref", "HEAD"), headers)
        if rest[:1] == ["compare"] and len(rest) == 2 and "..." in rest[1]:
            base, _, head = rest[1].partition("...")
            with self._lock:
                files = self._compares.get((repo, base, head))
            if files is None:
                raise Reply(404, {"message": "Not Found"})
            return Reply(
                200,
                {
                    "status": "ahead",
                    "total_commits": 1,
                    "files": [{"filename": f, "status": "modified"} for f in files[:_COMPARE_CAP]],
                },
            )
        if rest[:1] == ["pulls"] and len(rest) == 3 and rest[2] == "files" and rest[1].isdigit():
            return self._pulls(repo, int(rest[1]), query, path)
        raise Reply(404, {"message": "Not Found"})

    # ------------------------------------------------------------------ checks API
    def _checks_api(
        self, method: str, repo: str, rest: list[str], query: Mapping[str, str], inst: Installation, body: bytes
    ) -> Reply:
        if rest[0] == "commits" and method == "GET":
            ref = rest[1]
            with self._lock:
                sha = self._branches.get((repo, ref), ref)
                matching = [
                    c
                    for c in self._checks.values()
                    if c["repo"] == repo
                    and c["head_sha"] == sha
                    and c["app"]["id"] == int(inst.app_id)
                    and ("check_name" not in query or c["name"] == query["check_name"])
                ]
                if query.get("filter", "latest") == "latest":
                    newest: dict[str, dict[str, Any]] = {}
                    for c in matching:
                        newest[c["name"]] = c
                    matching = list(newest.values())
                runs = [public_run(c) for c in matching]
            return Reply(200, {"total_count": len(runs), "check_runs": runs})
        if rest == ["check-runs"] and method == "POST":
            data = check_body(body, create=True)
            with self._lock:
                check_id = 1_000_000 + len(self._checks) + 1
                run: dict[str, Any] = {
                    "id": check_id,
                    "repo": repo,
                    "app": {"id": int(inst.app_id)},
                    "status": "queued",
                    "conclusion": None,
                    "started_at": None,
                    "completed_at": None,
                    "external_id": "",
                    "details_url": None,
                    "output": {"title": None, "summary": None, "text": None},
                }
                apply_check(run, data)
                self._checks[check_id] = run
                self._check_log.append(json.loads(json.dumps(run)))
                return Reply(201, public_run(run))
        if len(rest) == 2 and rest[1].isdigit() and method in ("PATCH", "GET"):
            with self._lock:
                target = self._checks.get(int(rest[1]))
                if target is None or target["repo"] != repo:
                    raise Reply(404, {"message": "Not Found", "documentation_url": CHECKS_DOCS})
                if method == "GET":
                    return Reply(200, public_run(target))
            data = check_body(body, create=False)
            with self._lock:
                apply_check(target, data)
                self._check_log.append(json.loads(json.dumps(target)))
                return Reply(200, public_run(target))
        raise Reply(404, {"message": "Not Found"})

    def _mint(self, app: App, installation: str) -> Reply:
        with self._lock:
            inst = self._installations.get(int(installation)) if installation.isdigit() else None
            if inst is None or inst.app_id != app.app_id:
                raise Reply(404, {"message": "Not Found"})
            token = "ghs_" + secrets.token_hex(18)
            expires = self._now() + self.token_ttl
            self._tokens[token] = Token(inst.installation_id, expires)
        stamp = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Reply(201, {"token": token, "expires_at": stamp, "permissions": {"contents": "read"}})

    def _contents(self, repo: str, path: str, ref: str, headers: Mapping[str, str]) -> Reply:
        with self._lock:
            if ref == "HEAD":
                ref = self._default_branch.get(repo, "main")
            candidates = [ref]
            if (repo, ref) in self._branches:
                candidates.append(self._branches[(repo, ref)])
            content = next((self._files[(repo, r, path)] for r in candidates if (repo, r, path) in self._files), None)
            listing = sorted(
                p for (rp, r, p) in self._files if rp == repo and r in candidates and p.startswith(path + "/")
            )
        if content is None and listing:
            return Reply(200, [{"type": "file", "path": p, "name": p.rsplit("/", 1)[-1]} for p in listing])
        if content is None:
            raise Reply(404, {"message": "Not Found"})
        if "raw" in headers.get("accept", ""):
            return Reply(200, content, {"content-type": "application/vnd.github.raw"}, raw=True)
        return Reply(
            200,
            {
                "type": "file",
                "path": path,
                "size": len(content),
                "encoding": "base64",
                "content": base64.b64encode(content).decode(),
            },
        )

    def _pulls(self, repo: str, number: int, query: Mapping[str, str], path: str) -> Reply:
        with self._lock:
            files = self._pull_files.get((repo, number))
        if files is None:
            raise Reply(404, {"message": "Not Found"})
        per_page = max(1, min(100, int(query.get("per_page", "30"))))
        page = max(1, int(query.get("page", "1")))
        files = files[:_PR_FILES_CAP]
        chunk = files[(page - 1) * per_page : page * per_page]
        headers: dict[str, str] = {}
        last = max(1, -(-len(files) // per_page))
        if page < last:
            base = f"{self.url}{path}?per_page={per_page}"
            headers["link"] = f'<{base}&page={page + 1}>; rel="next", <{base}&page={last}>; rel="last"'
        return Reply(200, [{"filename": f, "status": "modified"} for f in chunk], headers)
