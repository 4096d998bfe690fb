"""Object-key layout: one implementation, shared by the storage adapters."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from kici_adapters import storage
from kici_core import keys


def test_segment_encoding_escapes_underscore_and_utf16_units() -> None:
    assert keys.encode_key_segment("abc-1.2:3") == "abc-1.2:3"
    assert keys.encode_key_segment("a/b_c d") == "a_2fb_5fc_20d"
    assert keys.encode_key_segment("\U0001f600") == "_d83d_de00"


def test_layout() -> None:
    assert keys.event_log_payload_key("org_1", "x_y") == "event-log/org_1/x_5fy.json.gz"
    assert keys.step_log_key("r", "build", 3) == "executions/r/job-build/step-3.log"
    assert keys.log_chunk_key("r", "j", None, 1) == "executions/r/job-j/job/chunk-00000001.log"


def test_storage_reexports_the_core_helpers() -> None:
    for name in ("encode_key_segment", "event_log_payload_key", "run_payload_key", "step_log_key", "log_chunk_key"):
        assert getattr(storage, name) is getattr(keys, name)


def _reference_encoding(value: str) -> str:
    """The escaping rule spelt out one character at a time (the stored-key contract)."""
    out = []
    for ch in value:
        if ch.isascii() and (ch.isalnum() or ch in ".:-"):
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")
            out += ["_" + format(int.from_bytes(units[i : i + 2], "big"), "x") for i in range(0, len(units), 2)]
    return "".join(out)


@given(st.text())
def test_segment_encoding_matches_the_character_rule(value: str) -> None:
    assert keys.encode_key_segment(value) == _reference_encoding(value)


@given(st.uuids())
def test_uuid_delivery_ids_are_kept_as_they_are(value: uuid.UUID) -> None:
    assert keys.encode_key_segment(str(value)) == str(value)
