"""Object-storage key layout (shared by every BlobStore adapter and the fakes).

Relative keys (the S3 log store adds the fixed prefix ``kici-logs/``):

* ``event-log/<orgId>/<encodedDeliveryId>.json.gz``: gzipped body of one accepted delivery
* ``executions/<runId>/webhook-payload.json``: the payload a run was started from
* ``executions/<runId>/job-<jobName>/step-<index>.log``: a step's log; large chunks go under
  ``executions/<runId>/job-<jobName>/step-<index>/chunk-<seq>.log``
* ``executions/<runId>/jobs/<jobId>/log.txt``: a finished job's assembled log

Every key is safe by construction: each variable part is one segment that cannot contain ``/`` or be
``.``/``..`` (:func:`safe_segment`, :func:`encode_key_segment`), whatever a sender or a lock file put in it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "encode_key_segment",
    "event_log_payload_key",
    "job_log_key",
    "log_chunk_key",
    "run_payload_key",
    "safe_segment",
    "step_log_key",
]

# The spec writes the safe set as [A-Za-z0-9._:-] but also says "_" itself is escaped (-> _5f), which
# is what makes the encoding reversible; we follow the latter: "_" is not in the safe set.
_SAFE_KEY_CHAR = re.compile(r"[A-Za-z0-9.:-]")
_SAFE_KEY = re.compile(r"[A-Za-z0-9.:-]*")
MAX_SEGMENT_CHARS = 180
"""Longest encoded delivery id kept whole in a key (file names are limited to 255 bytes)."""
_UNSAFE_SEGMENT = re.compile(r"[/\\\x00-\x1f\x7f]")


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


def safe_segment(value: str) -> str:
    """``value`` as one path segment of an object key that cannot escape its place.

    A value that is already harmless (no ``/``, ``\\``, control characters, and not empty, ``.`` or ``..``)
    is kept exactly, so the keys of well-formed ids never change; anything else is encoded with
    :func:`encode_key_segment`, with the dots of an all-dot result escaped too (``..`` -> ``_2e_2e``).
    """
    if value and not _UNSAFE_SEGMENT.search(value) and value.strip(".") != "":
        return value
    encoded = encode_key_segment(value)
    if encoded.strip(".") == "":
        encoded = encoded.replace(".", "_2e") or "_"
    return encoded


def _bounded(encoded: str, original: str) -> str:
    """``encoded`` when short enough to be a file name on every filesystem, else its first characters, ``~``
    (which the encoding never emits) and a digest of ``original``."""
    if len(encoded) <= MAX_SEGMENT_CHARS:
        return encoded
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{encoded[: MAX_SEGMENT_CHARS - 33]}~{digest}"


def event_log_payload_key(org_id: str, delivery_id: str) -> str:
    """``event-log/<orgId>/<encoded deliveryId>.json.gz`` (a well-formed org id is kept as it is; an encoded
    delivery id longer than :data:`MAX_SEGMENT_CHARS` is shortened with a digest)."""
    return f"event-log/{safe_segment(org_id)}/{_bounded(encode_key_segment(delivery_id), delivery_id)}.json.gz"


def run_payload_key(run_id: str) -> str:
    """``executions/<runId>/webhook-payload.json``: the payload copy kept per matched run."""
    return f"executions/{safe_segment(run_id)}/webhook-payload.json"


def job_log_key(run_id: str, job_id: str) -> str:
    """``executions/<runId>/jobs/<jobId>/log.txt``: a finished job's assembled log."""
    return f"executions/{safe_segment(run_id)}/jobs/{safe_segment(job_id)}/log.txt"


def step_log_key(run_id: str, job_name: str, step_index: int) -> str:
    """``executions/<runId>/job-<jobName>/step-<index>.log``: a step's whole log."""
    return f"executions/{safe_segment(run_id)}/job-{safe_segment(job_name)}/step-{step_index}.log"


def log_chunk_key(run_id: str, job_name: str, step_index: int | None, seq: int) -> str:
    """Key of one large log chunk stored out of line (``step_index`` None = job-level output)."""
    step = "job" if step_index is None else f"step-{step_index}"
    return f"executions/{safe_segment(run_id)}/job-{safe_segment(job_name)}/{step}/chunk-{seq:08d}.log"
