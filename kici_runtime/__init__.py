"""The programs, one subpackage each: ``orchestrator`` (``kici-server``, ``kici-standalone``), ``admin_cli``
(``kici-admin``), ``agent`` (``kici-agent``), ``relay`` (``kici-relay``); ``config`` holds the configuration
they read, and ``logging``, ``wirelogs`` and ``version`` are shared by all of them.

The admin CLI, the agent and the relay import nothing of the orchestrator; import-linter contracts in
``pyproject.toml`` keep it so, and keep the subpackages free of import cycles.
"""
