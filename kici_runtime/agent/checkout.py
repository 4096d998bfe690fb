"""Repository checkout for a dispatched job (spec §6.2).

Shallow clone of ``repoUrl`` (``--branch <ref>`` when ``ref`` is set), then make ``HEAD`` equal the
dispatched ``sha``: on a mismatch fetch the commit at depth 50 and check it out, else fail with
``SHA mismatch``. For ``http(s)`` URLs the clone credential is sent as an HTTP ``Authorization: Basic``
header through git's environment-supplied configuration (``GIT_CONFIG_COUNT``/``KEY``/``VALUE``: the
same effect as ``git -c http.extraHeader=...`` but invisible in the process list). It never appears
in the URL, in ``.git/config`` or in the job log. ``file://`` URLs and local paths are cloned without
credentials.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kici_runtime.agent import process
from kici_runtime.agent.process import ProcessResult, StopRequest


class CheckoutError(Exception):
    """The checkout failed; the message is safe to show in job logs and errors."""


class CheckoutStopped(Exception):
    """The checkout was interrupted by a cancel or the job timeout."""

    def __init__(self, result: ProcessResult) -> None:
        super().__init__(result.stopped_by or "stopped")
        self.result = result


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutRequest:
    """The dispatch fields that drive a checkout."""

    repo_url: str
    ref: str
    sha: str
    basic_user: str | None = None
    basic_secret: str | None = None


def redact_url(url: str) -> str:
    """Drop any ``user:password@`` from a URL before it is logged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def clone_source(repo_url: str) -> tuple[str, bool]:
    """Return ``(url to clone, whether credentials may be sent)``.

    Local paths become ``file://`` URLs (so ``--depth`` applies); only ``http``/``https`` get credentials.
    """
    scheme = urlsplit(repo_url).scheme.lower()
    if scheme in ("http", "https"):
        return repo_url, True
    if scheme == "" and not repo_url.startswith("git@"):
        return Path(repo_url).expanduser().resolve().as_uri(), False
    return repo_url, False


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def git_env(base: Mapping[str, str], header: str | None) -> dict[str, str]:
    """Environment for git: no prompts, and the auth header as environment-supplied config."""
    env = {k: v for k, v in base.items() if not k.startswith("GIT_CONFIG_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_ASKPASS"] = "true"
    if header is not None:
        env["GIT_CONFIG_COUNT"] = "1"
        env["GIT_CONFIG_KEY_0"] = "http.extraHeader"
        env["GIT_CONFIG_VALUE_0"] = header
    return env


async def checkout(
    request: CheckoutRequest,
    *,
    dest: Path,
    base_env: Mapping[str, str],
    log: Callable[[str], None],
    on_output: Callable[[bytes], None],
    stop: StopRequest,
    deadline: float | None,
    grace_s: float,
) -> None:
    """Clone ``request.repo_url`` into ``dest`` (which must not exist) at ``request.sha``.

    Raises:
        CheckoutError: git failed or the commit could not be checked out.
        CheckoutStopped: a cancel or the deadline interrupted git.
    """
    url, may_auth = clone_source(request.repo_url)
    header = None
    if may_auth and request.basic_secret:
        pair = f"{request.basic_user or 'x-access-token'}:{request.basic_secret}".encode()
        header = f"Authorization: Basic {base64.b64encode(pair).decode('ascii')}"
    env = git_env(base_env, header)

    async def git(*args: str, cwd: Path, what: str) -> None:
        log(f"$ git {' '.join(args)}")
        try:
            result = await process.run_process(
                ["git", *args],
                cwd=cwd,
                env=env,
                on_output=on_output,
                stop=stop,
                deadline=deadline,
                grace_s=grace_s,
            )
        except OSError as exc:
            raise CheckoutError(f"{what} failed: cannot run git ({exc.strerror or exc})") from None
        if result.stopped_by is not None:
            raise CheckoutStopped(result)
        if result.exit_code != 0:
            raise CheckoutError(f"{what} failed: git exited with {result.exit_code or result.signal}")

    async def head() -> str:
        chunks: list[bytes] = []
        result = await process.run_process(
            ["git", "rev-parse", "HEAD"],
            cwd=dest,
            env=env,
            on_output=chunks.append,
            stop=stop,
            deadline=deadline,
            grace_s=grace_s,
        )
        if result.stopped_by is not None:
            raise CheckoutStopped(result)
        return b"".join(chunks).decode("utf-8", "replace").strip() if result.exit_code == 0 else ""

    ref = _short_ref(request.ref)
    shown = redact_url(request.repo_url)
    log(f"Checking out {shown}" + (f" ({ref})" if ref else "") + (f" at {request.sha}" if request.sha else ""))
    clone_args = ["clone", "--depth", "1", "--no-tags"]
    if ref:
        clone_args += ["--branch", ref]
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The URL is passed as an argument but logged redacted; it carries no credentials of ours.
    log(f"$ git {' '.join(clone_args)} -- {shown} {dest.name}")
    try:
        result = await process.run_process(
            ["git", *clone_args, "--", url, str(dest)],
            cwd=dest.parent,
            env=env,
            on_output=on_output,
            stop=stop,
            deadline=deadline,
            grace_s=grace_s,
        )
    except OSError as exc:
        raise CheckoutError(f"clone failed: cannot run git ({exc.strerror or exc})") from None
    if result.stopped_by is not None:
        raise CheckoutStopped(result)
    if result.exit_code != 0:
        raise CheckoutError(f"clone failed: git exited with {result.exit_code or result.signal}")
    sha = request.sha.strip()
    if not sha or sha == "HEAD":
        return
    current = await head()
    if current.startswith(sha):
        log(f"HEAD is {current}")
        return
    log(f"HEAD is {current or 'unknown'}, fetching {sha}")
    await git("fetch", "--depth", "50", "--no-tags", "origin", sha, cwd=dest, what="fetch")
    await git("-c", "advice.detachedHead=false", "checkout", "--detach", sha, cwd=dest, what="checkout")
    current = await head()
    if not current.startswith(sha):
        raise CheckoutError(f"SHA mismatch: expected {sha}, HEAD is {current or 'unknown'}")
    log(f"HEAD is {current}")
