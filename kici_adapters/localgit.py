"""Repository access for ``local`` sources: a git repository on this machine, named by a ``file://`` URL.

A local source (``provider_type='local'``) keeps ``git_config = {"url": "file:///path/to/repo"}`` (or
``{"repoPath": "/path/to/repo"}``). The lock file is read with ``git show <ref>:.kici/kici.lock.json`` and the
changed files of a push with ``git diff --name-only base head``. Agents clone the same ``file://`` URL, so no
token is involved. This is what ``make dev`` uses to run a job end to end without GitHub.

What a full commit SHA holds never changes, so lock files read at a full SHA (present or missing) are kept in a
small LRU keyed by ``(repository path, sha)``: a burst of pushes to one commit costs one ``git show``. A
missing file is not cached: git reports an unknown commit the same way, and its objects may arrive later.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from urllib.parse import unquote, urlparse

import anyio

from kici_core import errors
from kici_core.source_records import GenericSource, LockfileFetch, RepoSource

LOCKFILE_PATH = ".kici/kici.lock.json"
_ZERO_SHA = "0" * 40
_SAFE_REF = re.compile(r"^[A-Za-z0-9._/@^~{}:+-]{1,255}$")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")


def repo_path(source: RepoSource) -> Path:
    """The local repository directory of a local source. Raises ``InvalidInput`` when it has none."""
    if not isinstance(source, GenericSource) or source.provider_type != "local":
        raise errors.InvalidInput("not a local source")
    cfg = source.git_config or {}
    raw = cfg.get("repoPath") or cfg.get("url")
    if not isinstance(raw, str) or not raw:
        raise errors.InvalidInput("local source has no git_config.url / git_config.repoPath")
    if raw.startswith("file://"):
        raw = unquote(urlparse(raw).path)
    return Path(raw)


def repo_url(source: RepoSource) -> str:
    """The ``file://`` URL agents clone."""
    return repo_path(source).resolve().as_uri()


def _check_ref(ref: str) -> str:
    if not _SAFE_REF.match(ref) or ref.startswith("-"):
        raise errors.InvalidInput(f"unsupported git ref: {ref!r}")
    return ref


async def _git(repo: Path, *args: str) -> tuple[int, bytes, bytes]:
    try:
        result = await anyio.run_process(["git", "-C", str(repo), *args], check=False)
    except OSError as exc:
        raise errors.UpstreamUnavailable(f"git is not available: {exc.strerror}") from exc
    return result.returncode, result.stdout, result.stderr


class LocalGitRepos:
    """LockfileSource, ChangedFilesSource and CloneTokenSource for local sources."""

    def __init__(self, *, max_lockfile_bytes: int = 5 * 1024 * 1024, cache_entries: int = 256) -> None:
        self._max = max_lockfile_bytes
        self._cache_entries = cache_entries
        self._cache: OrderedDict[tuple[str, str], LockfileFetch] = OrderedDict()
        self.git_reads = 0
        """``git show`` runs so far (cache misses), for tests and diagnostics."""

    async def fetch_lockfile(self, source: RepoSource, repo: str, ref: str) -> LockfileFetch:
        path = repo_path(source)
        key = (str(path), ref) if _FULL_SHA.match(ref or "") else None
        if key is not None and (hit := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return hit
        if not (path / ".git").exists() and not (path / "HEAD").exists():
            raise errors.UpstreamUnavailable(f"local repository not found: {path.name}")
        self.git_reads += 1
        code, out, err = await _git(path, "show", f"{_check_ref(ref or 'HEAD')}:{LOCKFILE_PATH}")
        if code != 0:
            text = err.decode(errors="replace")
            if "does not exist" in text or "exists on disk, but not in" in text:
                return LockfileFetch(content=None)
            raise errors.UpstreamUnavailable(f"git show failed for ref {ref!r}: {text.strip()[:200]}")
        if len(out) > self._max:
            raise errors.InvalidInput(f"lock file is {len(out)} bytes, over the {self._max}-byte limit")
        return self._remember(key, LockfileFetch(content=out))

    def _remember(self, key: tuple[str, str] | None, fetched: LockfileFetch) -> LockfileFetch:
        if key is not None and self._cache_entries > 0:
            self._cache[key] = LockfileFetch(content=fetched.content, cached=True)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return fetched

    async def changed_files(
        self, source: RepoSource, repo: str, *, base: str | None, head: str, pull_number: int | None = None
    ) -> list[str]:
        if not base or base == _ZERO_SHA or not head or head == _ZERO_SHA:
            return []
        path = repo_path(source)
        code, out, err = await _git(path, "diff", "--name-only", _check_ref(base), _check_ref(head), "--")
        if code != 0:
            raise errors.UpstreamUnavailable(f"git diff failed: {err.decode(errors='replace').strip()[:200]}")
        return [line for line in out.decode().splitlines() if line]

    async def clone_token(self, source: RepoSource, repo: str) -> str | None:
        return None
