"""Object-storage key layout (shared by every BlobStore adapter and the fakes).

Relative keys (the S3 log store adds the fixed prefix ``kici-logs/``):

* ``event-log/<orgId>/<encodedDeliveryId>.json.gz``: gzipped body of one accepted delivery
* ``executions/<runId>/webhook-payload.json``: the payload a run was started from
* ``executions/<runId>/job-<jobName>/step-<index>.log``: a step's log; large chunks go under
  ``executions/<runId>/job-<jobName>/step-<index>/chunk-<seq>.log``
* ``executions/<runId>/jobs/<jobId>/log.txt``: a finished job's assembled log
"""

from __future__ import annotations

import re

__all__ = [
    "encode_key_segment",
    "event_log_payload_key",
    "job_log_key",
    "log_chunk_key",
    "run_payload_key",
    "step_log_key",
]

# The spec writes the safe set as [A-Za-z0-9._:-] but also says "_" itself is escaped (-> _5f), which
# is what makes the encoding reversible; we follow the latter: "_" is not in the safe set.
_SAFE_KEY_CHAR = re.compile(r"[A-Za-z0-9.:-]")
_SAFE_KEY = re.compile(r"[A-Za-z0-9.:-]*")


def encode_key_segment(value: str) -> str:
    """Make ``value`` (e.g. a delivery id) safe as one object-key segment.

    Every character other than ASCII letters, digits, ``.``, ``:`` and ``-`` becomes ``_`` followed by
    the lower-case hex of each of its UTF-16 code units (``/`` -> ``_2f``, ``_`` -> ``_5f``), so the
    mapping is reversible. Frozen: stored keys depend on it.
    """
    if _SAFE_KEY.fullmatch(value):  # the common case (UUID delivery ids): nothing to escape
        return value
    out: list[str] = []
    for ch in value:
        if _SAFE_KEY_CHAR.fullmatch(ch):
            out.append(ch)
            continue
        units = ch.encode("utf-16-be")
        for i in range(0, len(units), 2):
            out.append("_" + format(int.from_bytes(units[i : i + 2], "big"), "x"))
    return "".join(out)


def event_log_payload_key(org_id: str, delivery_id: str) -> str:
    """``event-log/<orgId>/<encoded deliveryId>.json.gz`` (the org id is not encoded)."""
    return f"event-log/{org_id}/{encode_key_segment(delivery_id)}.json.gz"


def run_payload_key(run_id: str) -> str:
    """``executions/<runId>/webhook-payload.json``: the payload copy kept per matched run."""
    return f"executions/{run_id}/webhook-payload.json"


def job_log_key(run_id: str, job_id: str) -> str:
    """``executions/<runId>/jobs/<jobId>/log.txt``: a finished job's assembled log."""
    return f"executions/{run_id}/jobs/{job_id}/log.txt"


def step_log_key(run_id: str, job_name: str, step_index: int) -> str:
    """``executions/<runId>/job-<jobName>/step-<index>.log``: a step's whole log."""
    return f"executions/{run_id}/job-{job_name}/step-{step_index}.log"


def log_chunk_key(run_id: str, job_name: str, step_index: int | None, seq: int) -> str:
    """Key of one large log chunk stored out of line (``step_index`` None = job-level output)."""
    step = "job" if step_index is None else f"step-{step_index}"
    return f"executions/{run_id}/job-{job_name}/{step}/chunk-{seq:08d}.log"
