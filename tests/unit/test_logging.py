"""Structured JSON logging: fields, levels, context, masking."""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kici_runtime import logging as kici_logging
from kici_runtime.config import settings as config
from tests.support.props import examples

TOKEN = "kat_" + "0123456789abcdef" * 4


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    old_level = root.level
    handler = kici_logging.configure_logging("debug", stream=buf)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old_level)
    kici_logging.reset_secrets()


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_one_json_object_per_line_with_spec_fields(stream: io.StringIO) -> None:
    log = logging.getLogger("kici.test")
    log.info("Webhook accepted", extra={"deliveryId": "d-1", "event": "push"})
    log.warning("careful\nsecond line")
    raw = stream.getvalue().splitlines()
    assert len(raw) == 2
    first, second = lines(stream)
    assert list(first)[:4] == ["level", "message", "timestamp", "service"]
    assert first["level"] == "info" and first["message"] == "Webhook accepted"
    assert first["service"] == "orchestrator"
    assert first["deliveryId"] == "d-1" and first["event"] == "push"
    stamp = datetime.datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert second["level"] == "warn" and second["message"] == "careful\nsecond line"


def test_level_threshold_applies(stream: io.StringIO) -> None:
    kici_logging.configure_logging("warn", stream=stream)
    log = logging.getLogger("kici.test")
    log.info("hidden")
    log.debug("hidden too")
    log.error("shown")
    log.critical("also shown")
    assert [(d["level"], d["message"]) for d in lines(stream)] == [("error", "shown"), ("error", "also shown")]


def test_configure_twice_keeps_one_handler(stream: io.StringIO) -> None:
    kici_logging.configure_logging("info", stream=stream)
    logging.getLogger("kici.test").info("once")
    assert len(lines(stream)) == 1


def test_unknown_level_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        kici_logging.configure_logging("loud")


def test_context_fields_come_first_and_nest(stream: io.StringIO) -> None:
    log = logging.getLogger("kici.test")
    with kici_logging.log_context(requestId="r-1", runId="run-1"):
        with kici_logging.log_context(jobId="j-1"):
            log.info("inside", extra={"deliveryId": "d"})
        log.info("outer")
    log.info("outside")
    inner, outer, outside = lines(stream)
    assert list(inner)[4:] == ["requestId", "runId", "jobId", "deliveryId"]
    assert outer["runId"] == "run-1" and "jobId" not in outer
    assert "requestId" not in outside


def test_extra_cannot_replace_core_fields(stream: io.StringIO) -> None:
    logging.getLogger("kici.test").info("real", extra={"level": "debug", "timestamp": "x"})
    (doc,) = lines(stream)
    assert doc["level"] == "info" and doc["message"] == "real" and doc["timestamp"] != "x"


def test_agent_tokens_are_masked_everywhere(stream: io.StringIO) -> None:
    log = logging.getLogger("kici.test")
    log.info("token %s", TOKEN.upper().replace("KAT_", "kat_"), extra={"auth": {"token": TOKEN}, "list": [TOKEN]})
    out = stream.getvalue()
    assert "0123456789abcdef" not in out.lower()
    (doc,) = lines(stream)
    assert doc["message"] == "token kat_***"
    assert doc["auth"] == {"token": "kat_***"} and doc["list"] == ["kat_***"]


def test_registered_secrets_are_masked_in_message_fields_and_stack(stream: io.StringIO) -> None:
    secret = 'p@ss"word\\with-quotes'
    kici_logging.register_secret(secret)
    kici_logging.register_secrets(["", "second-secret-value"])
    log = logging.getLogger("kici.test")
    try:
        raise RuntimeError(f"connect failed for {secret}")
    except RuntimeError:
        log.exception("db down %s", "second-secret-value", extra={"dsn": f"postgresql://u:{secret}@h/db", secret: 1})
    out = stream.getvalue()
    assert secret not in out and json.dumps(secret)[1:-1] not in out and "second-secret-value" not in out
    (doc,) = lines(stream)
    assert doc["message"] == "db down ***"
    assert doc["dsn"] == "postgresql://u:***@h/db"
    assert doc["error"] == "connect failed for ***"
    assert "RuntimeError" in str(doc["stack"]) and "***" in str(doc["stack"])


def test_reset_secrets_forgets_them(stream: io.StringIO) -> None:
    kici_logging.register_secret("forget-me")
    kici_logging.reset_secrets()
    assert kici_logging.mask("forget-me") == "forget-me"


def test_masking_is_stable_when_joined_text_forms_a_secret() -> None:
    kici_logging.register_secret("prefix-0123***-suffix")
    kici_logging.register_secret("middle-secret-xyz")
    try:
        assert kici_logging.mask("prefix-0123middle-secret-xyz-suffix") == "***"
    finally:
        kici_logging.reset_secrets()


def test_a_short_database_password_masks_values_not_words(stream: io.StringIO) -> None:
    """A database password ``kici`` hides the password, never the letters in ``kici_runtime`` or ``kici-admin``."""
    url = "postgresql://kici:kici@db:5432/kici"
    kici_logging.register_secrets(
        config.load_settings(
            {"KICI_MODE": "independent", "KICI_DATABASE_URL": url, "KICI_SECRET_KEY": "ab" * 32},
            "standalone",
            default_config_path=None,
        ).secret_values()
    )
    log = logging.getLogger("kici.test")
    log.info(
        "kici-admin reached kici_runtime",
        extra={"dsn": url, "where": "kici_runtime.orchestrator.entry", "user": "kici"},
    )
    log.info("connect", extra={"libpq": "host=db user=kici password=kici dbname=kici", "password": "kici"})
    log.info("kici")
    first, second, third = lines(stream)
    assert first["message"] == "kici-admin reached kici_runtime"
    assert first["dsn"] == "postgresql://kici:***@db:5432/kici" and first["where"] == "kici_runtime.orchestrator.entry"
    assert first["user"] == "***"  # a field that is exactly the secret is masked, whatever its name
    assert second["libpq"] == "host=db user=kici password=*** dbname=kici" and second["password"] == "***"
    assert third["message"] == "***"
    assert ":kici@" not in stream.getvalue() and "password=kici" not in stream.getvalue()


def test_urls_and_secret_fields_are_masked_without_registration(stream: io.StringIO) -> None:
    log = logging.getLogger("kici.test")
    log.warning(
        "retrying https://bot:hunter2@git.example/x.git with api_key=abc123&x=1",
        extra={
            "headers": {"Authorization": "Bearer abc", "X-Other": "fine"},
            "privateKey": "-----BEGIN",
            "webhookSecretFingerprint": "…1234",
            "tokenId": "t-1",
            "auth": {"token": TOKEN},
        },
    )
    (doc,) = lines(stream)
    assert doc["message"] == "retrying https://bot:***@git.example/x.git with api_key=***&x=1"
    assert doc["headers"] == {"Authorization": "***", "X-Other": "fine"} and doc["privateKey"] == "***"
    assert doc["webhookSecretFingerprint"] == "…1234" and doc["tokenId"] == "t-1"
    assert doc["auth"] == {"token": "kat_***"}
    assert "hunter2" not in stream.getvalue() and "abc123" not in stream.getvalue()


def test_fatal_startup_line(stream: io.StringIO) -> None:
    kici_logging.log_fatal_startup(ValueError("KICI_DATABASE_URL is required"))
    (doc,) = lines(stream)
    assert doc["message"] == "Fatal startup error" and doc["level"] == "error"
    assert doc["error"] == "KICI_DATABASE_URL is required" and "ValueError" in str(doc["stack"])


def test_fatal_startup_line_without_stack(stream: io.StringIO) -> None:
    kici_logging.log_fatal_startup(ValueError("x"), message="KICI_DATABASE_URL is required: set it", with_stack=False)
    (doc,) = lines(stream)
    assert doc["error"] == "KICI_DATABASE_URL is required: set it" and "stack" not in doc


def test_static_fields_and_service_override(stream: io.StringIO) -> None:
    kici_logging.configure_logging("info", service="agent", stream=stream, static_fields={"environment": "production"})
    logging.getLogger("kici.test").info("hi", extra={"odd": object()})
    (doc,) = lines(stream)
    assert doc["service"] == "agent" and doc["environment"] == "production"
    assert str(doc["odd"]).startswith("<object object")


@settings(max_examples=examples(40), deadline=None)
@given(
    secret=st.text(alphabet=st.characters(codec="utf-8"), min_size=kici_logging.MIN_WHOLE_SECRET, max_size=24),
    before=st.text(max_size=10),
    after=st.text(max_size=10),
)
def test_no_registered_secret_survives_any_message(secret: str, before: str, after: str) -> None:
    kici_logging.register_secret(secret)
    try:
        formatter = kici_logging.JsonFormatter()
        record = logging.LogRecord("kici", logging.INFO, __file__, 1, before + secret + after, None, None)
        record.__dict__["field"] = {"k": before + secret}
        doc = json.loads(formatter.format(record))
    finally:
        kici_logging.reset_secrets()
    assert secret not in str(doc["message"]) and secret not in json.dumps(doc["field"], ensure_ascii=False)


@settings(max_examples=examples(40), deadline=None)
@given(
    secret=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=kici_logging.MIN_WHOLE_SECRET - 1),
    word=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-.", min_size=1, max_size=8),
)
@example(secret="message", word="_")  # a secret spelled like a field name leaves the field name alone
def test_a_short_secret_is_masked_as_a_value_and_left_inside_words(secret: str, word: str) -> None:
    kici_logging.register_secret(secret)
    try:
        formatter = kici_logging.JsonFormatter()
        record = logging.LogRecord("kici", logging.INFO, __file__, 1, secret, None, None)
        record.__dict__.update(
            {"value": secret, "dsn": f"postgresql://u:{secret.replace('@', '')}x@h/db", "words": word + secret + word}
        )
        doc = json.loads(formatter.format(record))
    finally:
        kici_logging.reset_secrets()
    assert doc["message"] == "***" and doc["value"] == "***"
    assert doc["dsn"] == "postgresql://u:***@h/db" or "/" in secret or any(c.isspace() for c in secret)
    assert doc["words"] == word + secret + word or _masked_anyway(word + secret + word)


def _masked_anyway(text: str) -> bool:
    """The text triggers a value rule of its own (an agent token, a URL password or a secret field)."""
    return kici_logging.mask(text) != text


@settings(max_examples=examples(40), deadline=None)
@given(
    secret=st.text(alphabet=st.characters(codec="utf-8"), min_size=6, max_size=12),
    values=st.lists(st.one_of(st.text(max_size=12), st.integers(), st.none(), st.booleans()), max_size=4),
    embed=st.booleans(),
    token=st.booleans(),
)
def test_fast_path_writes_exactly_what_per_field_masking_writes(
    secret: str, values: list[object], embed: bool, token: bool
) -> None:
    """The whole-line check may only skip masking when masking would change nothing."""
    kici_logging.register_secret(secret)
    try:
        formatter = kici_logging.JsonFormatter()
        inner = (secret if embed else "") + ("KAT_" + "aB" * 32 if token else "")
        record = logging.LogRecord("kici", logging.INFO, __file__, 1, "m", None, None)
        record.__dict__.update({"field": {"k": [*values, inner]}, "tags": (inner, frozenset({"x"}))})
        fast = formatter.format(record)
        original = kici_logging._has_maskable
        kici_logging._has_maskable = lambda text: True  # type: ignore[assignment]
        try:
            slow = formatter.format(record)
        finally:
            kici_logging._has_maskable = original  # type: ignore[assignment]
    finally:
        kici_logging.reset_secrets()
    assert fast == slow
