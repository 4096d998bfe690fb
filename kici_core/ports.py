"""Ports: what the core needs from the outside world, as ``typing.Protocol`` classes.

Adapters in ``kici_adapters`` implement these (``PgInbox``, ``GitHubLockfileSource``, ...); working in-memory
fakes live in ``kici_core.testing.fakes``. Methods take and return the domain records of the ``*_records``
modules (:mod:`kici_core.source_records`, :mod:`kici_core.delivery_records`, :mod:`kici_core.run_records`,
:mod:`kici_core.registration_records`, :mod:`kici_core.token_records`, :mod:`kici_core.dispatch_records`) and
raise only documented :mod:`kici_core.errors` (``StorageUnavailable`` for any storage outage).

Timestamps are timezone-aware ``datetime`` values in UTC. Ids are strings (UUID text where the database uses
``uuid``); the core never generates them itself — callers pass ids in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from kici_core.delivery_records import AcceptResult, Delivery, DeliveryOutcome, EventLogEntry, EventLogQuery, InboxItem
from kici_core.dispatch_records import (
    ConnectedAgent,
    DispatchNotice,
    DispatchRow,
    FinishResult,
    HeldJob,
    Overdue,
    QueuedRow,
    RecoveringRow,
    StartResult,
)
from kici_core.jsontypes import JSONObject, JSONValue
from kici_core.platform_events import PlatformEvent
from kici_core.registration_records import Schedule, WorkflowRegistration
from kici_core.run_records import NewRun, RerunResult
from kici_core.source_records import GenericSource, GitHubSource, LockfileFetch, RepoSource
from kici_core.token_records import AdminToken, AgentToken

if TYPE_CHECKING:  # the cluster records live with their rules in kici_core.cluster
    from kici_core.cluster import ClusterAgent, DutyInfo, InstanceInfo
    from kici_core.concurrency import Decision, Promoted


# --------------------------------------------------------------------------------------------- sources


class SourceStore(Protocol):
    """Webhook sources. Writes are visible to every reader at once (no restart, no stale cache)."""

    async def add_github(self, source: GitHubSource) -> GitHubSource:
        """Insert; raises ``Conflict`` when the routing key exists."""
        ...

    async def github_by_routing_key(self, routing_key: str) -> GitHubSource | None: ...

    async def list_github(self) -> list[GitHubSource]: ...

    async def update_github(self, source: GitHubSource) -> GitHubSource:
        """Replace the mutable fields; raises ``NotFound``."""
        ...

    async def remove_github(self, routing_key: str) -> bool:
        """Delete; True when a row was removed (idempotent)."""
        ...

    async def add_generic(self, source: GenericSource) -> GenericSource:
        """Insert; raises ``Conflict`` when ``(org_id, name)`` exists among non-deleted sources."""
        ...

    async def generic_by_id(self, source_id: str) -> GenericSource | None: ...

    async def generic_by_org_and_name(self, org_id: str, name: str) -> GenericSource | None:
        """Non-deleted source by name (the URL segment), falling back to id when ``name`` is a UUID."""
        ...

    async def list_generic(
        self, org_id: str | None = None, *, include_deleted: bool = False
    ) -> list[GenericSource]: ...

    async def update_generic(self, source: GenericSource) -> GenericSource: ...

    async def remove_generic(self, source_id: str, *, hard: bool = False) -> bool: ...


# --------------------------------------------------------------------------------------------- secrets
class SecretStore(Protocol):
    """Encrypted scoped secrets. Values are plaintext only in memory; storage holds AES-256-GCM text."""

    async def get(self, org_id: str, scope: str, key: str) -> str | None:
        """The decrypted value, or None. Raises ``SecretDecryptError`` when the master key is wrong."""
        ...

    async def put(self, org_id: str, scope: str, key: str, value: str) -> None: ...

    async def delete(self, org_id: str, scope: str, key: str | None = None) -> int:
        """Delete one key, or the whole scope when ``key`` is None; returns rows removed."""
        ...


# --------------------------------------------------------------------------------------------- blobs
class BlobStore(Protocol):
    """Object storage for gzipped payloads and logs.

    ``put`` is durable when it returns. ``durable=False`` is for copies of data kept durably elsewhere (a run's
    payload copy duplicates its delivery's event-log payload): the object is still written whole or not at
    all, but a store may skip forcing it to disk, so a power failure right after can lose it.
    """

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> None: ...

    async def get(self, key: str) -> bytes:
        """Raises ``NotFound`` when the key does not exist."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...


# --------------------------------------------------------------------------------------------- deliveries


class DeliveryInbox(Protocol):
    """Durable acceptance and the processing inbox (ARCHITECTURE §1-2)."""

    async def accept(self, delivery: Delivery) -> AcceptResult:
        """In ONE transaction claim ``(org_id, delivery_id)`` and insert the event_log row (status ``received``),
        the inbox row and the gzipped payload (moved to object storage later, in the background). Durable when
        it returns. A duplicate writes nothing and returns ``duplicate=True``. Raises ``StorageUnavailable``."""
        ...

    async def claim(self, *, worker_id: str, limit: int, lease_seconds: float) -> list[InboxItem]:
        """Claim up to ``limit`` unfinished deliveries whose lease is free or expired (``SKIP LOCKED``),
        oldest first, incrementing their attempt count.

        Poison-pill rule: a claim finding an expired lease counts a crash (the attempt holding it never
        finished). A delivery whose crashes reach :data:`~kici_core.delivery_records.MAX_CRASHES` is parked
        ``failed`` with that reason instead of being claimed again (it stays replayable); it is not among the
        returned items.
        """
        ...

    async def release_leases(self, worker_id: str) -> int:
        """Free the leases ``worker_id`` holds (a restarted process reclaiming what its previous life had
        claimed, instead of waiting for the leases to expire), counting a crash for each; returns how many were
        released."""
        ...

    async def payload(self, item: InboxItem) -> bytes:
        """The stored (un-gzipped) payload bytes. Raises ``NotFound``."""
        ...

    async def complete(self, item: InboxItem, outcome: DeliveryOutcome, runs: Sequence[NewRun]) -> list[str]:
        """In ONE transaction: create the runs with their jobs, needs edges and dispatch-queue rows for runnable
        jobs (a run exists at most once per ``(delivery, workflow)``: re-completing creates none), write the
        outcome on the event_log row, and finish the inbox row. Returns the run ids that exist for the delivery,
        first first. Notifies dispatchers."""
        ...

    async def fail(self, item: InboxItem, error: str, *, retry_after: float | None, crashed: bool = False) -> None:
        """Release the lease after a failed attempt: retry after ``retry_after`` seconds, or (None) park it as
        ``failed`` with ``error`` on the event_log row. ``crashed`` counts the attempt as a crash for the
        poison-pill rule (see :meth:`claim`): processing timed out."""
        ...

    async def replay(self, org_id: str, delivery_id: str) -> bool:
        """Put a stored delivery back in the inbox for processing again; False when unknown."""
        ...

    async def depth(self) -> int:
        """Deliveries accepted and not yet finished."""
        ...


# --------------------------------------------------------------------------------------------- event log (read)


class EventLog(Protocol):
    async def list(self, query: EventLogQuery) -> tuple[list[EventLogEntry], int]:
        """Entries newest first, and the total matching count."""
        ...

    async def get(self, org_id: str | None, delivery_id: str) -> EventLogEntry | None:
        """One entry; with ``org_id`` None the newest entry with that delivery id."""
        ...

    async def payload(self, org_id: str, delivery_id: str, /) -> bytes | None:
        """The delivery's stored body, un-gzipped (wherever it currently lives); None when the delivery is
        unknown or its payload was not stored. Raises ``NotFound`` when the stored object is missing and
        ``Unavailable`` when storage does not answer. (Positional-only: a store that is also the
        ``DeliveryInbox`` answers ``payload(item)`` with the same method.)"""
        ...


# --------------------------------------------------------------------------------------------- providers


class LockfileSource(Protocol):
    async def fetch_lockfile(self, source: RepoSource, repo: str, ref: str) -> LockfileFetch:
        """Raw ``.kici/kici.lock.json`` at ``ref``. Raises ``UpstreamUnavailable`` on persistent 401/403/5xx or
        network errors (after retries) and ``InvalidInput`` when the file exceeds the size limit."""
        ...


class ChangedFilesSource(Protocol):
    async def changed_files(
        self, source: RepoSource, repo: str, *, base: str | None, head: str, pull_number: int | None = None
    ) -> list[str]:
        """Changed paths of a push (compare ``base...head``) or a pull request (PR files API)."""
        ...


class CloneTokenSource(Protocol):
    async def clone_token(self, source: RepoSource, repo: str) -> str | None:
        """A short-lived token an agent may use to clone ``repo``; None when the provider needs none."""
        ...


# --------------------------------------------------------------------------------------------- re-runs


class RunReruns(Protocol):
    """New attempts of finished runs (same delivery, commit and planned jobs; linked to the first attempt)."""

    async def rerun(
        self,
        run_id: str,
        *,
        failed_only: bool = False,
        all_when_none_failed: bool = False,
        requested_by: str | None = None,
        key: str | None = None,
    ) -> RerunResult:
        """Start the next attempt of the run ``run_id`` belongs to. ``failed_only`` keeps the jobs that
        succeeded (``all_when_none_failed``: re-run everything when none failed). A ``key`` makes the request
        idempotent: the same key and run give the same attempt. Raises ``NotFound``, or ``Conflict`` when the
        latest attempt has not finished or there is nothing to re-run."""
        ...

    async def runs_at_commit(self, routing_key: str, repo: str, sha: str) -> list[tuple[str, str]]:
        """``(run_id, status)`` of the latest attempt of each run of ``repo`` at ``sha`` from this source."""
        ...

    async def run_for_check(self, routing_key: str, external_id: str) -> str | None:
        """The run owning the check run with this ``external_id`` created for this source, if any."""
        ...


# --------------------------------------------------------------------------------------------- registrations


class RegistrationStore(Protocol):
    """Workflows registered from default-branch pushes, and their schedules."""

    async def register(
        self, *, org_id: str, routing_key: str, repo: str, workflows: Sequence[WorkflowRegistration]
    ) -> None:
        """Make ``workflows`` the repository's registrations (ones no longer listed are removed). A schedule
        whose trigger keeps its expression and time zone keeps its next and last fire. When the stored ones
        already say the same (ids and delivery id aside), they may be left as they are."""
        ...

    async def unregister_repo(self, *, routing_key: str, repo: str) -> int:
        """Remove every registration of the repository (its lock file is gone); returns how many."""
        ...

    async def get(self, registration_id: str) -> WorkflowRegistration | None: ...

    async def list_schedules(self, *, routing_key: str | None = None) -> list[Schedule]: ...


# --------------------------------------------------------------------------------------------- cluster
class ClusterDirectory(Protocol):
    """The shared record of the orchestrator processes on one database and of the agents each one holds."""

    async def agents(self) -> list[ClusterAgent]:
        """Agents connected to a live process (a stopped or dead process's agents are left out), by id."""
        ...

    async def instances(self) -> list[InstanceInfo]:
        """Every registered process, alive or not (dead ones are pruned a day after they were recovered)."""
        ...

    async def duties(self) -> list[DutyInfo]:
        """Singleton duties that ran at least once, with the process that ran each last."""
        ...

    async def active_runs(self) -> int:
        """Runs not finished yet (pending, running, cancelling or held)."""
        ...

    async def now(self) -> datetime:
        """The shared clock that heartbeats are written with (the database's)."""
        ...


# --------------------------------------------------------------------------------------------- dispatch
class DispatchQueue(Protocol):
    """The durable dispatch queue and the shared agent table, as the dispatch driver uses them.

    A queue row is ``pending``, ``dispatched`` (to one agent), ``recovering`` (its agent left mid-job),
    ``completed``, ``failed`` or ``expired``. Every change is guarded on the row's current status, so of two
    processes racing for a row at most one wins. Every method raises ``Unavailable`` when storage is down.
    """

    async def pending(self, *, ids: Sequence[str] | None = None, limit: int = 10_000) -> list[QueuedRow]:
        """Pending rows oldest first (all, or only those of ``ids``)."""
        ...

    async def pending_positions(self, *, limit: int = 10_000) -> list[tuple[str, int]]:
        """``(job_id, seq)`` of the pending rows, oldest first (a cheap full scan)."""
        ...

    async def pending_since(self, after_seq: int, *, named: Sequence[str] = (), limit: int = 10_000) -> list[QueuedRow]:
        """Pending rows with ``seq > after_seq``, plus pending rows whose job id or run id is in ``named``
        (ids that are not UUIDs are ignored), oldest first."""
        ...

    async def claim_many(self, claims: Sequence[tuple[str, str, float]]) -> dict[str, DispatchRow]:
        """Guarded ``pending -> dispatched`` for each ``(job_id, agent_id, ack_deadline)``, at once. Returns the
        rows won, loaded for ``job.dispatch``; a job missing from the result was no longer pending."""
        ...

    async def acks_resolved(self, acks: Sequence[tuple[str, str]]) -> None:
        """Clear the ack deadlines of the ``(job_id, agent_id)`` rows still dispatched to that agent."""
        ...

    async def requeue(self, job_id: str, *, attempts: int) -> bool:
        """Guarded ``dispatched -> pending`` with ``attempts`` deliveries spent; announces the row to every
        process (:class:`~kici_core.dispatch_records.JobsQueued`). False when the row was not dispatched."""
        ...

    async def mark_recovering(self, job_id: str, *, agent_id: str, deadline: float) -> bool:
        """Guarded ``dispatched -> recovering`` until ``deadline``, waiting for ``agent_id`` (the job, when
        started, becomes ``recovering`` too)."""
        ...

    async def reclaim(self, job_id: str, *, agent_id: str) -> bool:
        """``recovering`` (or still ``dispatched`` to it) ``-> dispatched`` for the agent that reconnected; the
        job runs again."""
        ...

    async def reclaimable(self, agent_id: str, job_ids: Sequence[str]) -> list[tuple[str, str, float | None]]:
        """Of ``job_ids``, the rows ``agent_id`` may reclaim, as ``(job_id, run_id, recovery deadline)``."""
        ...

    async def owned(self, agent_id: str, job_id: str) -> bool:
        """Whether ``agent_id`` may report on ``job_id``: recovering or dispatched for it, or finished after
        running on it. Another agent's messages about a job are never accepted."""
        ...

    async def depth(self) -> dict[str, int]:
        """Row counts of ``pending`` and ``dispatched`` (both keys always present)."""
        ...

    async def orphaned_dispatched(self, instance_id: str) -> list[tuple[str, str, str]]:
        """Dispatched rows whose agent is held by no live process (its agent row names ``instance_id`` or no
        process): ``(job_id, run_id, agent_id)``."""
        ...

    async def recovering(self) -> list[RecoveringRow]:
        """Every recovering row."""
        ...

    async def overdue(self, *, grace_s: float) -> Overdue:
        """Rows past a deadline by more than ``grace_s`` (see :class:`~kici_core.dispatch_records.Overdue`). A
        dispatched row whose job started is not overdue for its ack."""
        ...

    def singleton(self, duty: str, holder: str) -> AbstractAsyncContextManager[bool]:
        """Hold the cross-process lock of ``duty`` for the block when no process holds it; yields whether it
        was taken (``holder`` is recorded as the duty's last runner)."""
        ...

    async def announce(self, notice: DispatchNotice) -> None:
        """Tell every orchestrator process (this one included) ``notice``."""
        ...

    def notices(self) -> AbstractAsyncContextManager[AsyncIterator[DispatchNotice]]:
        """Listen for notices: on entry the subscription is live (later notices are not missed); iterating yields
        them in order and raises ``Unavailable`` when the subscription breaks."""
        ...

    async def agent_connected(
        self,
        *,
        agent_id: str,
        labels: Sequence[str],
        mandatory: Sequence[str],
        platform: str | None,
        arch: str | None,
        version: str | None,
        hostname: str | None,
        max_concurrency: int,
        token_id: str | None,
        instance_id: str,
        metadata: JSONObject,
    ) -> None:
        """Record the agent as connected to ``instance_id`` (a token it had stays bound)."""
        ...

    async def bind_agent_token(self, agent_id: str, token_id: str) -> bool:
        """Bind ``agent_id`` to ``token_id`` unless another unrevoked token holds it; True when bound."""
        ...

    async def release_agent(self, agent_id: str) -> bool:
        """Free ``agent_id`` from its token binding; False when it is unknown or not bound."""
        ...

    async def agent_disconnected(self, agent_id: str, *, instance_id: str) -> None:
        """Record the agent as disconnected if ``instance_id`` still holds it."""
        ...

    async def release_instance(self, instance_id: str, *, keep: Sequence[str] = ()) -> None:
        """Record every agent ``instance_id`` held as disconnected, except ``keep``."""
        ...

    async def agents(self) -> list[ConnectedAgent]:
        """Agents connected to any process, by id."""
        ...

    async def aclose(self) -> None:
        """Release what the queue holds open (not the shared pool)."""
        ...


class RunStore(Protocol):
    """Run, job and step state as agents report it, and what a finished job releases.

    Every status change is guarded on the current status, so late or repeated reports change nothing. Ending a
    job is atomic with its consequences: its ``needs`` downstreams are queued (announced to every process) or
    skipped, a failFast matrix stops its siblings, and the run concludes once every job ended. Every method
    raises ``Unavailable`` when storage is down.
    """

    async def job_started(self, job_id: str, *, agent_id: str | None) -> StartResult:
        """The job runs (``started_at`` set once) and so does its run; a terminal job is left alone."""
        ...

    async def set_job_status(self, job_id: str, status: str, *, from_statuses: Sequence[str]) -> bool:
        """A guarded non-terminal change (``cancelling``, ``recovering``); True when applied."""
        ...

    async def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        error: str | None = None,
        outputs: JSONValue = None,
        row_status: str = "completed",
        pending_row_status: str = "expired",
        require_row: str | None = None,
    ) -> FinishResult:
        """End a job with the terminal ``status`` and apply what follows (class docstring). ``row_status`` is the
        queue row's new status when dispatched or recovering, ``pending_row_status`` when still pending. A job
        already terminal, or a queue row not in status ``require_row`` when given, makes it a no-op
        (``changed=False``). Raises ``InvalidInput`` when ``status`` is not terminal."""
        ...

    async def job_heartbeat(self, job_id: str) -> None:
        """Record a job heartbeat (only while the job runs)."""
        ...

    async def step_status(
        self,
        *,
        run_id: str,
        job_id: str,
        step_index: int,
        step_name: str,
        state: str,
        data: Mapping[str, JSONValue] | None,
        step_type: str | None,
        extra: Mapping[str, JSONValue] | None = None,
    ) -> bool:
        """Record a ``step.status`` (a terminal step stays terminal); False when the job is not the run's or the
        step is already terminal."""
        ...

    async def append_log(self, *, run_id: str, job_id: str, step_index: int, lines: Sequence[str]) -> bool:
        """Append one ``log.chunk`` (``step_index`` -1: the job-level log); False when the job is not the run's."""
        ...

    async def begin_cancel(self, run_id: str, *, reason: str, cancelled_by: str | None) -> list[HeldJob]:
        """Start cancelling a run: its waiting jobs are cancelled, its pending rows expire, the first
        ``cancelled_by``/``reason`` are recorded. Returns the jobs agents hold. Raises ``NotFound`` (no such run)
        or ``Conflict`` (the run already ended; the message is its status)."""
        ...

    async def settle_cancel(self, run_id: str, *, reason: str, notified: bool) -> str:
        """Finish a cancel: with agents ``notified`` the run becomes ``cancelling`` (it ends when they report);
        otherwise every remaining job is cancelled and the run concluded now. Returns the run's status."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds open (not the shared pool)."""
        ...


class ConcurrencyGroups(Protocol):
    """Workflow concurrency-group slots shared by every process (decisions by :mod:`kici_core.concurrency`)."""

    async def report(self, *, job_id: str, run_id: str, agent_id: str, group: str) -> Decision:
        """Decide a ``job.concurrency.report`` and record it; a job whose workflow has no group proceeds."""
        ...

    async def release_run(self, run_id: str) -> list[Promoted]:
        """A run ended: free its slots; returns the waiting jobs whose runs got a slot."""
        ...

    async def drop_agent(self, agent_id: str) -> int:
        """An agent left: cancel its waiting entries; returns how many."""
        ...

    async def ended_runs_with_slots(self, limit: int) -> list[str]:
        """Up to ``limit`` ids of runs that ended (``success``, ``failed``, ``cancelled``) yet still hold or wait
        on a slot: what a process that died between a run's end and :meth:`release_run` leaves behind. The
        caller releases them through :meth:`release_run`, which is idempotent."""
        ...


# --------------------------------------------------------------------------------------------- clock
class Clock(Protocol):
    def now(self) -> datetime:
        """The current UTC time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock, for deadlines."""
        ...


# --------------------------------------------------------------------------------------------- outbound links
class PlatformLink(Protocol):
    """What the Platform must hear (platform/hybrid), as domain events; the link turns them into frames.
    ``publish`` is durable: the event reaches the Platform at least once, in order, across disconnects and
    restarts."""

    async def publish(self, event: PlatformEvent) -> None: ...


# --------------------------------------------------------------------------------------------- tokens


class TokenStore(Protocol):
    """Admin and agent tokens, stored hashed (lower-case hex sha256 of the token text)."""

    async def create_admin_token(self, token: AdminToken, token_hash: str) -> AdminToken:
        """Insert; raises ``Conflict`` on a duplicate hash."""
        ...

    async def ensure_bootstrap_admin_token(self, token_hash: str, new_id: str) -> bool:
        """Upsert the ``label='bootstrap'`` owner token with this hash: a new value replaces the hash of the active
        bootstrap token (or is inserted as ``new_id``). A value that was revoked stays revoked: returns False and
        changes nothing. Raises ``Conflict`` when another (non-bootstrap) token has this hash."""
        ...

    async def has_active_admin_token(self) -> bool: ...

    async def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        """The token when it exists, is not revoked and has not expired (and records ``last_used_at``)."""
        ...

    async def list_admin_tokens(self) -> list[AdminToken]: ...

    async def revoke_admin_token(self, token_id: str) -> bool: ...

    async def create_agent_token(self, token: AgentToken, token_hash: str) -> AgentToken: ...

    async def agent_token_by_hash(self, token_hash: str) -> AgentToken | None:
        """A usable agent token (not revoked, not expired) and touch ``last_seen_at``."""
        ...

    async def list_agent_tokens(self) -> list[AgentToken]:
        """Non-revoked agent tokens."""
        ...

    async def revoke_agent_token(self, token_id: str) -> bool: ...
