"""The orchestrator server (``kici-server``, ``kici-standalone``).

Entry points: ``server`` and ``standalone`` (the console scripts) over ``entry`` (start-up: settings,
logging, fatal errors); ``wiring`` builds every adapter from the settings and serves, ``components`` holds what
the serving process and the processing children both build (inbox, pipeline, delivery worker, offloader).
The HTTP app and its routes: ``app``, ``webhook_routes``, ``httpguard``, ``agent_sockets``, ``ingest`` (shared
with the Platform link), the admin API in ``admin/``, the web dashboard in ``dashboard/``. The loops: the
delivery ``worker``, the dispatch driver (``dispatcher`` over ``hub_effects``, ``hub_reports`` and ``hub_loops``),
the processing supervisor and child
(``processing``), the relay client of platform/hybrid mode (``platform_link``), ``cluster``, ``retention``,
``scheduler``, ``check_sender`` and the container auto-scaler in ``scaler/``. Process tuning: ``eventloop``,
``heap``, ``shutdown``. ``devserver`` is what ``make dev`` runs.
"""
