"""The Checks API: create, update and find check runs with an App's installation token.

:meth:`GitHubChecks.send` makes one attempt and reports how it went (:class:`SendOutcome`) instead of retrying:
the caller keeps the state durably and decides when to try again, honouring what GitHub asked for
(``Retry-After``, an exhausted rate limit's ``x-ratelimit-reset``). A check run whose id is not known yet is
created, unless an earlier attempt may have created it already: then it is first looked up by name and
``external_id`` on its commit, so a lost response never makes a second check run.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from kici_adapters.github import client as gh
from kici_adapters.github.app import GitHubApp
from kici_core import errors
from kici_core.jsontypes import JSONObject

__all__ = ["GitHubChecks", "SendOutcome", "server_wait"]

_EVERY_STATUS = frozenset(range(100, 600))
_LIST_PAGE = "100"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOutcome:
    """How one send went. ``ok``: GitHub has the state (``github_id`` is the check run's id, ``created`` when this
    request created it). Otherwise ``error`` says why, ``retry_after`` is the wait GitHub asked for (None: the
    caller's backoff), ``permanent`` means sending the same state again cannot help (a validation error), and
    ``forget_id`` that GitHub no longer knows the check-run id."""

    ok: bool
    github_id: int | None = None
    created: bool = False
    error: str | None = None
    retry_after: float | None = None
    permanent: bool = False
    forget_id: bool = False


def server_wait(response: gh.GitHubResponse, now: float) -> float | None:
    """Seconds GitHub asked to wait: ``Retry-After``, or the reset of an exhausted rate limit."""
    retry_after = response.headers.get("retry-after", "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    reset = response.headers.get("x-ratelimit-reset", "").strip()
    if response.headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        return max(0.0, float(reset) - now)
    return None


def _describe(response: gh.GitHubResponse) -> str:
    detail = response.message()
    text = f"HTTP {response.status}" + (f" ({detail})" if detail else "")
    if response.status == 403 and "not accessible by integration" in detail.lower():
        text += ": does the App have the `checks: write` permission?"
    return text


class GitHubChecks:
    """Check runs of one GitHub App (its installation tokens and client)."""

    def __init__(self, app: GitHubApp) -> None:
        self._app = app

    async def find(self, repo: str, *, head_sha: str, name: str, external_id: str) -> int | None:
        """The id of the check run called ``name`` with ``external_id`` on ``head_sha``, if GitHub has one.

        Raises:
            UpstreamUnavailable: GitHub could not answer.
        """
        path = f"{gh.repo_path(repo)}/commits/{quote(head_sha, safe='')}/check-runs"
        resp = await self._app.client.request(
            "GET",
            path,
            credentials=self._app.repo_credentials(repo),
            params={"check_name": name, "filter": "all", "per_page": _LIST_PAGE},
            expect=frozenset({200, 404}),
        )
        if resp.status == 404:
            return None
        body = resp.json()
        runs = body.get("check_runs") if isinstance(body, dict) else None
        for run in runs if isinstance(runs, list) else []:
            if isinstance(run, dict) and run.get("external_id") == external_id and isinstance(run.get("id"), int):
                return int(str(run["id"]))
        return None

    async def send(self, repo: str, body: JSONObject, *, github_id: int | None, lookup: bool) -> SendOutcome:
        """Create (``github_id`` None) or update one check run with ``body`` (see ``kici_core.checks``); with
        ``lookup``, an unknown id is first searched for (a previous attempt may have created the check run)."""
        try:
            if github_id is None and lookup:
                name, sha, external = body.get("name"), body.get("head_sha"), body.get("external_id")
                if isinstance(name, str) and isinstance(sha, str) and isinstance(external, str):
                    github_id = await self.find(repo, head_sha=sha, name=name, external_id=external)
            if github_id is None:
                resp = await self._request("POST", f"{gh.repo_path(repo)}/check-runs", repo, body)
            else:
                patch = {k: v for k, v in body.items() if k != "head_sha"}
                resp = await self._request("PATCH", f"{gh.repo_path(repo)}/check-runs/{github_id}", repo, patch)
        except errors.KiciError as exc:  # token minting, installation lookup, network: try again later
            return SendOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
        if resp.status in (200, 201):
            data = resp.json()
            found = data.get("id") if isinstance(data, dict) else None
            new_id = int(str(found)) if isinstance(found, int) else github_id
            return SendOutcome(ok=True, github_id=new_id, created=github_id is None)
        error = _describe(resp)
        if resp.status == 404 and github_id is not None:
            return SendOutcome(ok=False, error=error, forget_id=True, retry_after=0.0)
        if resp.status == 401:  # the cached installation token was revoked: mint another next time
            try:
                self._app.forget_token(await self._app.installation_id(repo))
            except errors.KiciError:
                pass
            return SendOutcome(ok=False, error=error)
        if resp.status in (400, 422):
            return SendOutcome(ok=False, error=error, permanent=True)
        return SendOutcome(ok=False, error=error, retry_after=server_wait(resp, self._app.client.clock()))

    async def _request(self, method: str, path: str, repo: str, body: JSONObject) -> gh.GitHubResponse:
        return await self._app.client.request(
            method, path, credentials=self._app.repo_credentials(repo), json_body=body, expect=_EVERY_STATUS
        )
