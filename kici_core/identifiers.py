"""The character sets of the identifiers outsiders put in URLs and headers: org ids, source names, delivery ids.

Webhook routes check them before anything else (an answer of 400 names the rule), so nothing downstream (SQL,
object keys, log lines) ever sees a NUL byte, a path separator or a ``..`` segment from a sender.

* org id: 1-16 characters of ``A-Z a-z 0-9 _ . : -``, not starting with ``.`` (it is a path segment of
  payload object keys);
* source name (the ``<sourceId>`` of the generic route, also a source UUID): 1-255 characters of
  ``A-Z a-z 0-9 _ . : -``, not starting with ``.``;
* delivery id: 1-512 printable ASCII characters (space to ``~``) without leading or trailing spaces.
"""

from __future__ import annotations

import re

from kici_core import errors

__all__ = [
    "DELIVERY_ID_MAX_LEN",
    "ORG_ID_MAX_LEN",
    "SOURCE_NAME_MAX_LEN",
    "check_delivery_id",
    "check_org_id",
    "check_source_name",
]

ORG_ID_MAX_LEN = 16
"""``event_log.org_id`` is ``varchar(16)``."""
SOURCE_NAME_MAX_LEN = 255
DELIVERY_ID_MAX_LEN = 512
"""Generous for ``<routing_key>:<raw>``; longer ids are refused rather than truncated."""

_NAME = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9_.:-]*")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


def check_org_id(value: str) -> str:
    """``value`` when it is a valid org id.

    Raises:
        InvalidInput: it is not (the message says why, without echoing the value).
    """
    if not value:
        raise errors.InvalidInput("org id is empty")
    if len(value) > ORG_ID_MAX_LEN:
        raise errors.InvalidInput(f"org id is longer than {ORG_ID_MAX_LEN} characters")
    if not _NAME.fullmatch(value):
        raise errors.InvalidInput("org id may contain only letters, digits and _ . : - (not starting with .)")
    return value


def check_source_name(value: str) -> str:
    """``value`` when it is a valid source name (or source UUID).

    Raises:
        InvalidInput: it is not.
    """
    if not value:
        raise errors.InvalidInput("source id is empty")
    if len(value) > SOURCE_NAME_MAX_LEN:
        raise errors.InvalidInput(f"source id is longer than {SOURCE_NAME_MAX_LEN} characters")
    if not _NAME.fullmatch(value):
        raise errors.InvalidInput("source id may contain only letters, digits and _ . : - (not starting with .)")
    return value


def check_delivery_id(value: str) -> str:
    """``value`` when it is a valid delivery id.

    Raises:
        InvalidInput: it is not.
    """
    if not value:
        raise errors.InvalidInput("delivery id is empty")
    if len(value) > DELIVERY_ID_MAX_LEN:
        raise errors.InvalidInput(f"delivery id is longer than {DELIVERY_ID_MAX_LEN} characters")
    if value != value.strip():
        raise errors.InvalidInput("delivery id has leading or trailing whitespace")
    if not _PRINTABLE.fullmatch(value):
        raise errors.InvalidInput("delivery id may contain only printable ASCII characters")
    return value
