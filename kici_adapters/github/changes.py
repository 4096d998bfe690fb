"""Changed files of a push (compare API) or a pull request (paginated PR files API).

Only needed when a ``push``/``pr`` trigger has ``paths``. Failures use the client's retry policy and
then raise :class:`~kici_adapters.github.client.GitHubApiError`; they are never turned into "no files".
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from kici_adapters.github import client as gh
from kici_adapters.github.app import GitHubApp
from kici_core.jsontypes import JSONValue

__all__ = ["COMPARE_FILE_CAP", "PER_PAGE", "PR_FILES_CAP", "ZERO_SHA", "GitHubChangedFilesSource"]

log = logging.getLogger(__name__)

ZERO_SHA = "0" * 40
COMPARE_FILE_CAP = 300  # GitHub returns at most this many files from a compare
PR_FILES_CAP = 3000  # GitHub lists at most this many files of a pull request
PER_PAGE = 100


def _filenames(items: JSONValue, what: str) -> list[str]:
    if not isinstance(items, list):
        raise gh.GitHubApiError(f"GitHub returned an unexpected {what} body")
    names: list[str] = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("filename"), str):
            names.append(str(item["filename"]))
    return names


class GitHubChangedFilesSource:
    """Lists changed paths with an App's installation token."""

    def __init__(self, *, app: GitHubApp) -> None:
        self.app = app

    async def push_files(
        self, repo: str, *, before: str | None, after: str | None, installation_id: int | None = None
    ) -> tuple[str, ...]:
        """Paths changed between ``before`` and ``after`` of a push.

        A new branch (``before`` all zeros), a deletion (``after`` all zeros) or a missing SHA yields
        ``()``, as upstream does. GitHub truncates compares at 300 files; the truncated list is used and a
        warning logged.

        Raises:
            GitHubApiError: GitHub kept failing.
        """
        if not before or not after:
            log.warning("push to %s lacks before/after SHAs; assuming no changed files", repo)
            return ()
        if before == ZERO_SHA or after == ZERO_SHA:
            return ()
        path = f"{gh.repo_path(repo)}/compare/{quote(before, safe='')}...{quote(after, safe='')}"
        resp = await self.app.client.request(
            "GET",
            path,
            credentials=self.app.repo_credentials(repo, installation_id=installation_id),
        )
        body = resp.json()
        files = body.get("files", []) if isinstance(body, dict) else None
        names = _filenames(files, "compare")
        if len(names) >= COMPARE_FILE_CAP:
            log.warning(
                "compare %s...%s in %s lists %d files; GitHub may have truncated it",
                before[:12],
                after[:12],
                repo,
                len(names),
            )
        return tuple(names)

    async def pull_request_files(
        self, repo: str, number: int, *, installation_id: int | None = None
    ) -> tuple[str, ...]:
        """Paths changed by pull request ``number`` (new names for renames), up to 3,000 files.

        Raises:
            GitHubApiError: GitHub kept failing.
        """
        credentials = self.app.repo_credentials(repo, installation_id=installation_id)
        path = f"{gh.repo_path(repo)}/pulls/{int(number)}/files"
        names: list[str] = []
        for page in range(1, PR_FILES_CAP // PER_PAGE + 1):
            resp = await self.app.client.request(
                "GET",
                path,
                credentials=credentials,
                params={"per_page": str(PER_PAGE), "page": str(page)},
            )
            batch = resp.json()
            names.extend(_filenames(batch, "pull request files"))
            if not isinstance(batch, list) or len(batch) < PER_PAGE:
                break
        return tuple(names[:PR_FILES_CAP])
