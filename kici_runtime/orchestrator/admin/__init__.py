"""The admin API (operations spec §2): ``/api/v1/admin/*`` routes of the orchestrator.

``auth`` authenticates callers and holds the shared request helpers; ``api`` gathers the routes of ``ops``
(tokens, keys, database), ``sources``, ``runs``, ``workflows`` and ``cluster``.
"""
