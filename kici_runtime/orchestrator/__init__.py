"""The orchestrator server (``kici-server``, ``kici-standalone``).

The HTTP app and its routes (``app``, ``webhook_routes``, ``httpguard``, ``agent_sockets``, the admin API in
``admin/``, the web dashboard in ``dashboard/``), the delivery worker and ingest (``worker``, ``ingest``), the
dispatch driver (``dispatcher``), the processing supervisor (``processing``), the background duties
(``cluster``, ``retention``, ``scheduler``, ``check_sender``, the container auto-scaler in ``scaler/``), the
wiring of settings to adapters (``wiring``, ``context``, ``bootstrap``) and the program entry points
(``entry``, ``server``, ``standalone``, ``devserver``).
"""
