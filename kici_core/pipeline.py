"""Processing an accepted delivery into runs (webhooks spec §5, ARCHITECTURE §2).

``Pipeline.process`` turns one claimed inbox item into a :class:`ProcessOutput` (the outcome recorded on the
event_log row and the runs to create); :func:`kici_core.handling.handle_item` drives one item end to end
against the inbox, including the retry policy. Everything here is deterministic given the ports: ids and time
come in through ``ids`` and ``timer``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from kici_core import errors, events, lockfile, matching, planning, registrations
from kici_core.delivery_records import DeliveryOutcome, InboxItem
from kici_core.jsontypes import JSONValue
from kici_core.lockfile_cache import ParsedLockfiles
from kici_core.new_runs import new_run
from kici_core.ports import ChangedFilesSource, LockfileSource, RegistrationStore, RunReruns, SourceStore
from kici_core.registration_records import WorkflowRegistration
from kici_core.run_records import NewRun
from kici_core.source_records import GenericSource, GitHubSource, RepoSource

_RERUN_EVENTS = frozenset({"check_run", "check_suite"})

DEFAULT_MAX_RUNS = 100
"""Runs one delivery may create (``KICI_MAX_RUNS_PER_DELIVERY``); more fails the delivery."""
DEFAULT_MAX_JOBS = 1000
"""Jobs (matrix children included) one delivery may create (``KICI_MAX_JOBS_PER_DELIVERY``); more fails it."""

_T = TypeVar("_T")


class Offload(Protocol):
    """Runs a CPU-bound step (lock-file parsing, matching, planning) and awaits its result: the runtime moves it
    off its event loop (a worker thread), so a slow step never stalls intake or ``/health``."""

    def __call__(self, fn: Callable[[], _T], /) -> Awaitable[_T]: ...


async def run_inline(fn: Callable[[], _T], /) -> _T:
    """The default :class:`Offload`: run ``fn`` right here (tests and tools)."""
    return fn()


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """How to read repositories of one provider (``github`` or ``local``)."""

    lockfiles: LockfileSource
    changed_files: ChangedFilesSource
    repo_url: Callable[[RepoSource, str, Mapping[str, JSONValue]], str]
    """Clone URL of ``repo`` for agents."""


class PipelineObserver(Protocol):
    """Metrics hooks (the runtime binds them to Prometheus)."""

    def matched(self, seconds: float) -> None: ...

    def processed(self, result: str) -> None: ...


class _NoObserver:
    def matched(self, seconds: float) -> None:
        return None

    def processed(self, result: str) -> None:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrationUpdate:
    """A default-branch push's new registrations for its repository (none: its lock file is gone)."""

    org_id: str
    routing_key: str
    repo: str
    workflows: tuple[WorkflowRegistration, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessOutput:
    outcome: DeliveryOutcome
    runs: tuple[NewRun, ...] = ()
    match: matching.MatchResult | None = None
    event: events.NormalisedEvent | None = None
    registration: RegistrationUpdate | None = None
    """Set for a push to the default branch: the repository's registrations to store before the outcome."""


def _received(reason: str, **kw: str | None) -> ProcessOutput:
    return ProcessOutput(
        outcome=DeliveryOutcome(
            status="received", error_message=reason, repo_identifier=kw.get("repo"), ref=kw.get("ref")
        )
    )


@dataclass(slots=True, kw_only=True)
class Pipeline:
    sources: SourceStore
    providers: Mapping[str, Provider]
    ids: Callable[[], str]
    timer: Callable[[], float]
    observer: PipelineObserver = field(default_factory=_NoObserver)
    parsed: ParsedLockfiles = field(default_factory=ParsedLockfiles)
    """Parsed lock files shared across deliveries (by content hash)."""
    reruns: RunReruns | None = None
    """Where ``check_run``/``check_suite`` deliveries with action ``rerequested`` start new attempts (None:
    such deliveries are only recorded)."""
    offload: Offload = run_inline
    """Where the CPU-bound steps run (see :class:`Offload`)."""
    budget_seconds: float | None = None
    """Time budget of one delivery's matching and planning (measured with ``timer``): past it processing stops
    with ``ProcessingTimeout``, which counts as a crash (poison-pill rule). None: no budget."""
    max_runs: int = DEFAULT_MAX_RUNS
    """Runs one delivery may create; more fails the delivery with the reason."""
    max_jobs: int = DEFAULT_MAX_JOBS
    """Jobs (matrix children included) one delivery may create; more fails the delivery with the reason."""
    registrations: RegistrationStore | None = None
    """Where default-branch pushes register workflows and schedule fires find them (None: no registrations)."""

    async def _source(self, item: InboxItem) -> RepoSource | None:
        if item.provider == "github":
            return await self.sources.github_by_routing_key(item.routing_key)
        if item.provider == "local":
            # routing key "generic:<org>:<id>"
            source_id = item.routing_key.rsplit(":", 1)[-1]
            found = await self.sources.generic_by_id(source_id)
            return found if isinstance(found, GenericSource) and found.provider_type == "local" else None
        return None

    async def process(self, item: InboxItem, body: bytes) -> ProcessOutput:
        """Normalise, read the lock file, match and plan. Raises ``Unavailable`` for retryable failures."""
        try:
            payload_value = json.loads(body)
        except ValueError:
            return ProcessOutput(outcome=DeliveryOutcome(status="failed", error_message="stored payload is not JSON"))
        except RecursionError:
            return ProcessOutput(
                outcome=DeliveryOutcome(status="failed", error_message="stored payload is nested too deeply")
            )
        payload: Mapping[str, JSONValue] = (
            payload_value if isinstance(payload_value, dict) else {"value": payload_value}
        )
        provider = self.providers.get(item.provider)
        if provider is None:
            return _received(f"no repository provider for {item.provider} deliveries")
        if item.event in _RERUN_EVENTS and item.provider == "github" and self.reruns is not None:
            return await self._rerequested(item, payload, self.reruns)
        if item.source == "internal":  # a schedule fire or a manual run
            from kici_core import internal_events

            return await internal_events.process_internal(self, item, payload, await self._source(item))
        event = events.normalize_github(item.event, payload)
        if event is None:
            return _received(f"event {item.event!r} is not supported")
        repo = events.repo_full_name(payload)
        if repo is None:
            return _received("payload names no repository")
        source = await self._source(item)
        if source is None:
            return _received(f"no source registered for {item.routing_key}", repo=repo)
        # The commit the delivery is about (a pull request's head) is what jobs check out and what the event
        # log records; the lock file may be read elsewhere (an untrusted pull request's base branch, §6.7).
        ref = events.commit_ref(item.event, payload)
        lock_ref = events.lockfile_ref(item.event, payload)
        try:
            # a provider may validate before caching, so a corrupt (or oversized) file can surface here too
            fetched = await provider.lockfiles.fetch_lockfile(source, repo, lock_ref)
            if fetched.content is None:
                note = None if lock_ref == ref else f"no {lockfile.LOCKFILE_PATH} at {lock_ref}"
                gone = self._registration(item, event, repo, ref, None, provider, source, payload)
                return ProcessOutput(
                    outcome=DeliveryOutcome(
                        status="lockfile_missing", repo_identifier=repo, ref=ref, error_message=note
                    ),
                    registration=gone,
                )
            lock = self.parsed.cached(fetched.content)
            if lock is None:
                lock = await self.offload(functools.partial(self.parsed.parse, fetched.content))
        except errors.LockfileError as exc:
            return ProcessOutput(
                outcome=DeliveryOutcome(
                    status="lockfile_corrupt", repo_identifier=repo, ref=ref, error_message=str(exc)[:2000]
                )
            )
        event = dataclasses.replace(event, source_repo=repo)
        if any(t.needs_paths for w in lock.workflows for t in w.triggers):
            event = event.with_changed_files(await self._changed_files(provider, source, repo, item.event, payload))
        started = self.timer()
        decided = await self.offload(functools.partial(self._decide, lock, event, started))
        self.observer.matched(self.timer() - started)
        if isinstance(decided, str):
            self.observer.processed("error")
            return ProcessOutput(
                outcome=DeliveryOutcome(status="failed", error_message=decided, repo_identifier=repo, ref=ref)
            )
        result, trace, plans = decided
        decisions = {d.workflow_name: d for d in result.matched}
        sha = ref if ref != "HEAD" else None
        wire_event = event.to_wire(item.provider)
        plain = self.parsed.plain(lock)
        runs = tuple(
            new_run(
                plan,
                run_id=self.ids(),
                plain=plain,
                provider=item.provider,
                routing_key=item.routing_key,
                repo=repo,
                repo_url=provider.repo_url(source, repo, payload),
                ref=events.job_ref(event),
                sha=sha,
                decision=decisions[plan.workflow_name].summary_dict(),
                lock_source=lock.source,
                event=wire_event,
            )
            for plan in plans
        )
        outcome = DeliveryOutcome(
            status="processed", matched_count=len(runs), repo_identifier=repo, ref=ref, decision_trace=trace
        )
        self.observer.processed("matched" if runs else "skipped")
        return ProcessOutput(
            outcome=outcome,
            runs=runs,
            match=result,
            event=event,
            registration=self._registration(item, event, repo, ref, lock, provider, source, payload),
        )

    def _registration(
        self,
        item: InboxItem,
        event: events.NormalisedEvent,
        repo: str,
        sha: str,
        lock: lockfile.Lockfile | None,
        provider: Provider,
        source: RepoSource,
        payload: Mapping[str, JSONValue],
    ) -> RegistrationUpdate | None:
        """A push to the default branch (re)registers the lock file's workflows (lock-file spec §7.3)."""
        if self.registrations is None or not registrations.is_default_branch_push(item.event, event):
            return None
        if sha in ("HEAD", events.ZERO_SHA):
            return None
        found = (
            ()
            if lock is None
            else tuple(
                registrations.registrations_from(
                    self.parsed.registered(lock),
                    org_id=item.org_id,
                    routing_key=item.routing_key,
                    provider=item.provider,
                    repo=repo,
                    ref=event.target_branch,
                    sha=sha,
                    repo_url=provider.repo_url(source, repo, payload),
                    delivery_id=item.delivery_id,
                    ids=self.ids,
                )
            )
        )
        return RegistrationUpdate(org_id=item.org_id, routing_key=item.routing_key, repo=repo, workflows=found)

    async def _rerequested(self, item: InboxItem, payload: Mapping[str, JSONValue], reruns: RunReruns) -> ProcessOutput:
        """GitHub's "Re-run" buttons: a ``check_suite`` re-runs every run of its commit, a ``check_run`` the failed
        jobs of its run (all of them when none failed). Only check runs of this source's App are considered."""
        action = payload.get("action")
        if action != "rerequested":
            return _received(f"{item.event} action {action!r} needs nothing")
        source = await self._source(item)
        subject = payload.get(item.event)
        repo = events.repo_full_name(payload)
        if not isinstance(source, GitHubSource) or not isinstance(subject, Mapping) or repo is None:
            return _received(f"{item.event} without a known source, {item.event} object or repository", repo=repo)
        app = subject.get("app")
        if not isinstance(app, Mapping) or str(app.get("id")) != source.app_id:
            return _received(f"{item.event} belongs to another GitHub App", repo=repo)
        sender = payload.get("sender")
        login = sender.get("login") if isinstance(sender, Mapping) else None
        by = f"github:{login}" if isinstance(login, str) else "github"
        sha = subject.get("head_sha")
        if item.event == "check_run":
            external = subject.get("external_id")
            run_id = await reruns.run_for_check(item.routing_key, external) if isinstance(external, str) else None
            targets = [] if run_id is None else [run_id]
        else:
            found = await reruns.runs_at_commit(item.routing_key, repo, sha) if isinstance(sha, str) else []
            targets = [run_id for run_id, _ in found]
        ref = sha if isinstance(sha, str) else None
        if not targets:
            return _received(f"no run of this orchestrator matches the {item.event}", repo=repo, ref=ref)
        started: list[JSONValue] = []
        refused: list[JSONValue] = []
        for run_id in targets:
            try:
                result = await reruns.rerun(
                    run_id,
                    failed_only=item.event == "check_run",
                    all_when_none_failed=True,
                    requested_by=by,
                    key=f"{item.org_id}:{item.delivery_id}",
                )
            except errors.Conflict as exc:
                refused.append({"runId": run_id, "reason": exc.message})
                continue
            started.append(
                {
                    "runId": result.run_id,
                    "originalRunId": result.original_run_id,
                    "attempt": result.attempt,
                    "rerunJobs": result.rerun_jobs,
                    "carriedJobs": result.carried_jobs,
                }
            )
        self.observer.processed("matched" if started else "skipped")
        note = "; ".join(f"{r['runId']}: {r['reason']}" for r in refused if isinstance(r, dict)) or None
        return ProcessOutput(
            outcome=DeliveryOutcome(
                status="processed",
                matched_count=len(started),
                repo_identifier=repo,
                ref=ref,
                error_message=note,
                decision_trace={"rerun": started, "refused": refused},
            )
        )

    def _decide(
        self,
        lock: lockfile.Lockfile,
        event: events.NormalisedEvent,
        started: float,
    ) -> tuple[matching.MatchResult, JSONValue, list[planning.RunPlan]] | str:
        """Match, render the stored trace and plan (CPU-bound, run through ``offload``); a string is why the
        delivery fails instead."""
        check = None
        if self.budget_seconds is not None:
            deadline, budget, timer = started + self.budget_seconds, self.budget_seconds, self.timer

            def check() -> None:
                if timer() > deadline:
                    raise errors.ProcessingTimeout(f"matching ran past its time budget of {budget:g} s")

        result = self.parsed.index(lock).evaluate(event, trace=True, check=check)
        trace = result.to_dict()
        if check is not None:
            check()
        names = result.matched_names
        if len(names) > self.max_runs:
            return (
                f"{len(names)} workflows matched: more runs than one delivery may create "
                f"({self.max_runs}, KICI_MAX_RUNS_PER_DELIVERY)"
            )
        plans = planning.plan_runs(lock, names, id_factory=self.ids)
        jobs = sum(len(plan.jobs) for plan in plans)
        if jobs > self.max_jobs:
            return (
                f"the {len(plans)} matched workflows have {jobs} jobs: more than one delivery may create "
                f"({self.max_jobs}, KICI_MAX_JOBS_PER_DELIVERY)"
            )
        return result, trace, plans

    async def _changed_files(
        self, provider: Provider, source: RepoSource, repo: str, event_name: str, payload: Mapping[str, JSONValue]
    ) -> list[str]:
        req = events.changed_files_request(event_name, payload)
        if req is None:
            return []
        if req.kind == "pull_request":
            return await provider.changed_files.changed_files(source, repo, base=None, head="", pull_number=req.number)
        return await provider.changed_files.changed_files(source, repo, base=req.base, head=req.head or "")
