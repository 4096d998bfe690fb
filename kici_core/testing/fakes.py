"""Working in-memory implementations of every port, with inspection fields for tests.

They follow the same contracts as the PostgreSQL adapters (``tests/contract`` runs one suite against both), so a
process wired with fakes behaves like one wired with PostgreSQL, minus durability. The fakes live in modules by area
(``clock``, ``storage_fakes``, ``inbox_fakes``, ``repo_fakes``, ``rerun_fakes``, ``token_fakes``, ``dispatch_fakes``,
``run_fakes``); this module re-exports them all, so tests import every fake from here.
"""

from __future__ import annotations

from datetime import datetime

from kici_core.cluster import ClusterAgent, DutyInfo, InstanceInfo
from kici_core.platform_events import PlatformEvent
from kici_core.testing.clock import FakeClock as FakeClock
from kici_core.testing.dispatch_fakes import FakeDispatchQueue as FakeDispatchQueue
from kici_core.testing.dispatch_fakes import FakeDispatchTables as FakeDispatchTables
from kici_core.testing.inbox_fakes import DEFAULT_MAX_PAYLOAD_BYTES as DEFAULT_MAX_PAYLOAD_BYTES
from kici_core.testing.inbox_fakes import FakeDeliveryInbox as FakeDeliveryInbox
from kici_core.testing.inbox_fakes import FakeRun as FakeRun
from kici_core.testing.repo_fakes import FakeChangedFilesSource as FakeChangedFilesSource
from kici_core.testing.repo_fakes import FakeCloneTokenSource as FakeCloneTokenSource
from kici_core.testing.repo_fakes import FakeLockfileSource as FakeLockfileSource
from kici_core.testing.repo_fakes import FakeRegistrationStore as FakeRegistrationStore
from kici_core.testing.repo_fakes import FakeSourceStore as FakeSourceStore
from kici_core.testing.rerun_fakes import FakeAttempt as FakeAttempt
from kici_core.testing.rerun_fakes import FakeRunReruns as FakeRunReruns
from kici_core.testing.run_fakes import FakeConcurrencyGroups as FakeConcurrencyGroups
from kici_core.testing.run_fakes import FakeRunStore as FakeRunStore
from kici_core.testing.storage_fakes import FakeBlobStore as FakeBlobStore
from kici_core.testing.storage_fakes import FakeSecretStore as FakeSecretStore
from kici_core.testing.token_fakes import FakeTokenStore as FakeTokenStore


class FakePlatformLink:
    def __init__(self) -> None:
        self.published: list[PlatformEvent] = []

    async def publish(self, event: PlatformEvent) -> None:
        self.published.append(event)


class FakeClusterDirectory:
    """In-memory :class:`~kici_core.ports.ClusterDirectory`: tests set :attr:`agent_list`, :attr:`instance_list`
    and :attr:`duty_list` directly; :attr:`clock` is its "now"."""

    def __init__(self, *, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.agent_list: list[ClusterAgent] = []
        self.instance_list: list[InstanceInfo] = []
        self.duty_list: list[DutyInfo] = []
        self.running_runs = 0

    async def agents(self) -> list[ClusterAgent]:
        return sorted(self.agent_list, key=lambda a: a.agent_id)

    async def instances(self) -> list[InstanceInfo]:
        return list(self.instance_list)

    async def duties(self) -> list[DutyInfo]:
        return list(self.duty_list)

    async def active_runs(self) -> int:
        return self.running_runs

    async def now(self) -> datetime:
        return self.clock.now()
