"""The container auto-scaler (operations spec §7): starts agent containers for jobs no connected agent takes.

* :mod:`~kici_runtime.orchestrator.scaler.config` loads and validates ``scalers.yaml`` and ``scalers.d/*.yaml``;
* :mod:`~kici_runtime.orchestrator.scaler.startup` runs the start-up checks (label-set overlaps, required tools, the
  NET_ADMIN/nftables check, runtime detection) and prepares engines, the isolated network and nft table;
* :mod:`~kici_runtime.orchestrator.scaler.service` is the loop: plan with :mod:`kici_core.scaling`, spawn and remove
  containers through the Engine API (:mod:`kici_adapters.containers`), state in PostgreSQL.
"""
