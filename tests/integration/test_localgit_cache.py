"""Local sources: lock files read at a full commit SHA are cached; branch names and failures are not."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kici_adapters import localgit
from kici_core import errors
from kici_core.source_records import GenericSource

pytestmark = pytest.mark.anyio


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _commit(repo: Path, content: str | None) -> str:
    lock = repo / ".kici" / "kici.lock.json"
    if content is None:
        lock.unlink(missing_ok=True)
        (repo / "other.txt").write_text(str(len(list(repo.iterdir()))))
    else:
        lock.parent.mkdir(exist_ok=True)
        lock.write_text(content)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "c")
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    _git(tmp_path, "init", "-q", "-b", "main", str(path))
    return path


def _source(path: Path) -> GenericSource:
    return GenericSource(
        id="s",
        org_id="o",
        name="n",
        routing_key="generic:o:s",
        provider_type="local",
        git_config={"url": path.as_uri()},
    )


async def test_full_sha_reads_run_git_once(repo: Path) -> None:
    first = _commit(repo, json.dumps({"v": 1}))
    gone = _commit(repo, None)
    repos = localgit.LocalGitRepos()
    src = _source(repo)
    for _ in range(3):
        fetched = await repos.fetch_lockfile(src, "r", first)
        assert fetched.content == b'{"v": 1}'
    assert repos.git_reads == 1
    for _ in range(2):
        assert (await repos.fetch_lockfile(src, "r", gone)).content is None
    assert repos.git_reads == 3  # "missing" is not cached: an unknown commit looks the same
    assert (await repos.fetch_lockfile(src, "r", first)).cached


async def test_branch_refs_are_read_every_time(repo: Path) -> None:
    _commit(repo, json.dumps({"v": 1}))
    repos = localgit.LocalGitRepos()
    src = _source(repo)
    assert (await repos.fetch_lockfile(src, "r", "main")).content == b'{"v": 1}'
    _commit(repo, json.dumps({"v": 2}))
    assert (await repos.fetch_lockfile(src, "r", "main")).content == b'{"v": 2}'
    assert repos.git_reads == 2


async def test_commit_arriving_later_is_read_then(repo: Path) -> None:
    repos = localgit.LocalGitRepos()
    src = _source(repo)
    _commit(repo, json.dumps({"v": 0}))
    unborn = repo.parent / "unborn"
    _git(repo.parent, "clone", "-q", str(repo), str(unborn))
    sha = _commit(repo, json.dumps({"v": 1}))
    assert (await repos.fetch_lockfile(_source(unborn), "r", sha)).content is None  # not there yet
    _git(unborn, "pull", "-q", "origin", "main")
    assert (await repos.fetch_lockfile(_source(unborn), "r", sha)).content == b'{"v": 1}'
    assert (await repos.fetch_lockfile(src, "r", sha)).content == b'{"v": 1}'


async def test_missing_repository_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(errors.UpstreamUnavailable):
        await localgit.LocalGitRepos().fetch_lockfile(_source(tmp_path / "nope"), "r", "f" * 40)


async def test_cache_is_bounded(repo: Path) -> None:
    shas = [_commit(repo, json.dumps({"v": i})) for i in range(3)]
    repos = localgit.LocalGitRepos(cache_entries=2)
    src = _source(repo)
    for sha in shas:
        await repos.fetch_lockfile(src, "r", sha)
    await repos.fetch_lockfile(src, "r", shas[0])  # evicted: read again
    assert repos.git_reads == 4
