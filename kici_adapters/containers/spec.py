"""The Engine API ``POST /containers/create`` body of one scaler agent container (operations spec §7.4)."""

from __future__ import annotations

from collections.abc import Mapping

from kici_core import netrules, scaling
from kici_core.jsontypes import JSONObject, JSONValue

__all__ = ["AGENT_ENV_PREFIX", "container_labels", "container_spec"]

AGENT_ENV_PREFIX = "KICI_AGENT_ENV_"
"""Orchestrator variables forwarded to every spawned agent, prefix removed (``KICI_AGENT_ENV_FOO=x`` -> ``FOO=x``)."""


def container_labels(
    scaler: scaling.ScalerSpec, label_set: int, *, agent_id: str, job_id: str | None, run_id: str | None
) -> dict[str, str]:
    """The engine labels that mark a container as the scaler's (``kici-managed=true``) and say what it is."""
    labels = {
        "kici-managed": "true",
        "kici-scaler-name": scaler.name,
        "kici-agent-id": agent_id,
        "kici-labels": ",".join(scaler.label_sets[label_set].labels),
    }
    if job_id is not None:
        labels["kici-bound-job-id"] = job_id
    if run_id is not None:
        labels["kici-run-id"] = run_id
    return labels


def container_spec(
    scaler: scaling.ScalerSpec,
    label_set: int,
    *,
    agent_id: str,
    token: str,
    orchestrator_url: str,
    job_id: str | None = None,
    run_id: str | None = None,
    socket_path: str | None = None,
    forwarded_env: Mapping[str, str] | None = None,
) -> JSONObject:
    """The create body: image, environment (agent id, labels, token, URL, forwarded and label-set variables, in
    that order of precedence from lowest), labels, and host config (memory, CPUs, binds, extra hosts, network).

    ``socket_path`` is the engine socket bind-mounted at ``/var/run/docker.sock`` when the label set asks for
    ``containerSocket`` (root-equivalent access to the host)."""
    ls = scaler.label_sets[label_set]
    env: dict[str, str] = {
        "KICI_ORCHESTRATOR_URL": orchestrator_url,
        "KICI_AGENT_ID": agent_id,
        "KICI_LABELS": ",".join(ls.labels),
        "KICI_SCALER_MANAGED": "1",
        "KICI_EXECUTION_MODE": "bare-metal",
        "KICI_AGENT_TOKEN": token,
    }
    if ls.backpressure_mode is not None:
        env["KICI_BACKPRESSURE_MODE"] = ls.backpressure_mode
    for name, value in sorted((forwarded_env or {}).items()):
        if name.startswith(AGENT_ENV_PREFIX) and len(name) > len(AGENT_ENV_PREFIX):
            env[name[len(AGENT_ENV_PREFIX) :]] = value
    env.update(dict(ls.env))
    binds: list[JSONValue] = list(ls.volumes)
    if ls.container_socket and socket_path:
        binds.append(f"{socket_path}:/var/run/docker.sock")
    host: dict[str, JSONValue] = {"AutoRemove": False, "Binds": binds, "ExtraHosts": list(scaler.extra_hosts)}
    if ls.memory_bytes is not None:
        host["Memory"] = ls.memory_bytes
    if ls.nano_cpus is not None:
        host["NanoCpus"] = ls.nano_cpus
    spec: dict[str, JSONValue] = {
        "Image": ls.image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": dict(container_labels(scaler, label_set, agent_id=agent_id, job_id=job_id, run_id=run_id)),
        "HostConfig": host,
    }
    if scaler.network_isolation:
        host["NetworkMode"] = netrules.NETWORK
    return spec
