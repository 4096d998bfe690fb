"""The PostgreSQL adapters for the core's storage ports, in one import.

``PgSourceStore`` (``SourceStore``), ``PgDeliveryInbox`` (``DeliveryInbox`` and ``EventLog``) and
``PgTokenStore`` (``TokenStore``) live in their own modules; this module re-exports them for wiring.
"""

from __future__ import annotations

from kici_adapters.postgres.inbox import DEFAULT_MAX_PAYLOAD_BYTES, GroupCommit, PgDeliveryInbox
from kici_adapters.postgres.sources import PgSourceStore
from kici_adapters.postgres.tokens import PgTokenStore

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "GroupCommit", "PgDeliveryInbox", "PgSourceStore", "PgTokenStore"]
