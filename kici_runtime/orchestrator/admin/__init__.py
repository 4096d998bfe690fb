"""The admin API (operations spec §2): ``/api/v1/admin/*`` routes of the orchestrator.

``auth`` authenticates callers and holds the shared request helpers; ``bodies`` declares the request bodies as
pydantic models (a refused body is a 400 naming each wrong field's path); ``api`` gathers the routes of ``ops``
(tokens, keys, database), ``sources``, ``runs``, ``workflows`` and ``cluster``.
"""
