"""Object-storage key layout (shared by every BlobStore adapter)."""

from __future__ import annotations

import re

_SAFE_KEY_CHAR = re.compile(r"[A-Za-z0-9.:-]")


def encode_key_segment(value: str) -> str:
    """Encode a delivery id for use in an object key.

    Characters outside ``[A-Za-z0-9._:-]`` become ``_`` followed by the lower-case hex of each UTF-16 code
    unit; ``_`` itself is encoded too (``_5f``) so the mapping is reversible. Frozen: stored keys depend on it.
    """
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
