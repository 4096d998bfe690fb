"""The storage of ``kici-relay`` (the development stand-in for the Platform's relay): ``store`` keeps API keys,
webhook sources and recorded orchestrator messages in one SQLite file (its statements in ``store.sql``);
``routing`` holds the routing-key and API-key pattern rules the store and the relay check."""
