"""``kici-admin``: the admin CLI, an HTTP client of the orchestrator's admin API.

``cli`` holds the root group and its global options, the other modules one command group each (``events``,
``sources``, ``runs``, ``schedules``, ``cluster``). Nothing here imports the server.
"""
