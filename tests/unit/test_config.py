"""Runtime configuration: precedence, YAML, refusals, base path, docs in sync."""

from __future__ import annotations

import base64
import importlib.util
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici_core.errors import ConfigError
from kici_runtime.config import admin as admin_config
from kici_runtime.config import docs as config_docs
from kici_runtime.config import settings as config
from kici_runtime.config import vars as config_vars
from kici_runtime.config.settings import SettingsError, load_settings
from tests.support.props import examples

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEX_KEY = "0123456789abcdef" * 4
DB = "postgresql://kici:s3cr3t-pw@postgres:5432/kici"
PLATFORM = {
    "KICI_MODE": "platform",
    "KICI_PLATFORM_URL": "wss://platform.example/ws",
    "KICI_PLATFORM_TOKEN": "kici_plat_token_value",
    "KICI_DATABASE_URL": DB,
    "KICI_SECRET_KEY": HEX_KEY,
}
INDEPENDENT = {"KICI_MODE": "independent", "KICI_DATABASE_URL": DB, "KICI_SECRET_KEY": HEX_KEY}
NO_KEY = {k: v for k, v in INDEPENDENT.items() if k != "KICI_SECRET_KEY"}


def server(env: dict[str, str], **kw: object) -> config.Settings:
    return load_settings(env, "server", default_config_path=None, **kw)  # type: ignore[arg-type]


def standalone(env: dict[str, str], **kw: object) -> config.Settings:
    return load_settings(env, "standalone", default_config_path=None, **kw)  # type: ignore[arg-type]


def refusal(fn: object, env: dict[str, str], **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        fn(env, **kw)  # type: ignore[operator]
    assert info.value.exit_code == 78
    return str(info.value)


# --- happy paths and defaults ------------------------------------------------------------------


def test_guide_platform_example_boots_with_defaults() -> None:
    env = {**PLATFORM, "KICI_SECRET_KEY": HEX_KEY, "KICI_BOOTSTRAP_ADMIN_TOKEN": "adm", "NODE_ENV": "production"}
    s = server(env)
    assert s.mode == "platform" and s.port == 4000 and s.host == "0.0.0.0" and s.base_path == ""
    assert s.platform_enabled and not s.direct_webhooks_enabled
    assert s.secret_key == bytes.fromhex(HEX_KEY)
    assert s.agent_auth == "token" and s.auto_migrate and s.log_level == "info"
    assert s.environment == "production"
    assert s.lockfile_max_bytes == 5 * 1024 * 1024
    assert s.http_max_body_bytes == 25 * 1024 * 1024 and s.generic_webhook_max_body_bytes == 10 * 1024 * 1024
    assert s.github_api_url == "https://api.github.com"
    assert s.database_url is not None and s.database_url.reveal() == DB
    assert s.warnings == ()


def test_independent_ignores_platform_credentials() -> None:
    s = standalone({**INDEPENDENT, "KICI_PLATFORM_URL": "wss://x/ws", "KICI_PLATFORM_TOKEN": "t"})
    assert s.platform_url is None and s.platform_token is None
    assert not s.platform_enabled and s.direct_webhooks_enabled


def test_hybrid_runs_on_server_entry() -> None:
    s = server({**PLATFORM, "KICI_MODE": "hybrid"})
    assert s.mode == "hybrid" and s.platform_enabled and s.direct_webhooks_enabled


def test_base64_master_key_and_key_file(tmp_path: pathlib.Path) -> None:
    key = bytes(range(32))
    assert standalone({**INDEPENDENT, "KICI_SECRET_KEY": base64.b64encode(key).decode()}).secret_key == key
    path = tmp_path / "key"
    path.write_text(f"  {HEX_KEY}\n")
    assert standalone({**NO_KEY, "KICI_SECRET_KEY_FILE": str(path)}).secret_key == bytes.fromhex(HEX_KEY)
    # env wins over the file
    both = {**INDEPENDENT, "KICI_SECRET_KEY_FILE": str(path), "KICI_SECRET_KEY": base64.b64encode(key).decode()}
    assert standalone(both).secret_key == key


@pytest.mark.parametrize(
    "entry, env",
    [
        ("standalone", NO_KEY),
        ("server", {k: v for k, v in PLATFORM.items() if k != "KICI_SECRET_KEY"}),
        ("server", {k: v for k, v in PLATFORM.items() if k != "KICI_SECRET_KEY"} | {"KICI_MODE": "hybrid"}),
    ],
)
def test_every_mode_refuses_to_boot_without_a_master_key(entry: str, env: dict[str, str]) -> None:
    msg = refusal(standalone if entry == "standalone" else server, env)
    assert msg == config.MISSING_KEY_MESSAGE and "\n" not in msg
    assert msg.startswith("KICI_SECRET_KEY is required")
    assert 'python3 -c "import secrets; print(secrets.token_hex(32))"' in msg


def test_dev_mode_generates_an_ephemeral_key_and_says_so() -> None:
    s = standalone({**NO_KEY, "KICI_DEV": "true"})
    other = standalone({**NO_KEY, "KICI_DEV": "true"})
    assert len(s.secret_key) == 32 and s.secret_key_generated and s.secret_key != other.secret_key
    assert config.EPHEMERAL_KEY_WARNING in s.warnings
    assert s.secret_key.hex() in s.secret_values()  # masked should it ever reach a log line
    assert not standalone(INDEPENDENT).secret_key_generated
    # a configured but broken key is an error even in dev mode, never silently replaced
    assert refusal(standalone, {**NO_KEY, "KICI_DEV": "true", "KICI_SECRET_KEY": "short"}).startswith(
        "KICI_SECRET_KEY is malformed"
    )


def test_agent_auth_none_warns() -> None:
    s = standalone({**INDEPENDENT, "KICI_AGENT_AUTH": "none"})
    assert s.agent_auth == "none" and any("KICI_AGENT_AUTH=none" in w for w in s.warnings)


def test_auto_migrate_only_literal_false_disables() -> None:
    assert standalone({**INDEPENDENT, "KICI_AUTO_MIGRATE": "false"}).auto_migrate is False
    assert standalone({**INDEPENDENT, "KICI_AUTO_MIGRATE": "no"}).auto_migrate is True


def test_embedded_database_explicit_or_dev() -> None:
    s = standalone({"KICI_MODE": "independent", "KICI_DATABASE_URL": "embedded", "KICI_SECRET_KEY": HEX_KEY})
    assert s.embedded_database and s.database_url is None
    s = standalone({"KICI_MODE": "independent", "KICI_DEV": "true", "KICI_SECRET_KEY": HEX_KEY})
    assert s.embedded_database and s.dev


# --- precedence --------------------------------------------------------------------------------


def test_primary_env_wins_over_alias() -> None:
    s = standalone({**INDEPENDENT, "KICI_PORT": "5000", "KICI_SERVER_PORT": "6000", "KICI_SERVER_LOG_LEVEL": "debug"})
    assert s.port == 5000 and s.log_level == "debug"
    assert standalone({**INDEPENDENT, "KICI_SERVER_PORT": "6000"}).port == 6000


def test_env_wins_over_yaml_and_yaml_over_default(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestrator.yaml"
    path.write_text(
        "instance:\n  mode: independent\n  id: inst-1\n"
        "server:\n  port: 4100\n  basePath: /ci/\n  logLevel: warn\n"
        "database:\n  url: postgresql://y@db/k\n"
        "storage:\n  type: s3\n  bucket: cache\n  forcePathStyle: true\n"
        "queue:\n  maxDepth: 7\n"
        "cluster:\n  peers: [a, b]\n"
    )
    s = standalone({"KICI_CONFIG": str(path), "KICI_PORT": "4200", "KICI_SECRET_KEY": HEX_KEY})
    assert s.mode == "independent" and s.instance_id == "inst-1"
    assert s.port == 4200  # env wins
    assert s.base_path == "/ci" and s.log_level == "warn" and s.queue_max_depth == 7
    assert s.storage.type == "s3" and s.storage.bucket == "cache" and s.storage.force_path_style is True
    assert s.database_url is not None and s.database_url.reveal() == "postgresql://y@db/k"
    assert s.config_file == str(path)
    assert s.queue_timeout_ms == 3600000  # default


def test_config_flag_wins_over_env_var(tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("server:\n  port: 1111\n")
    b.write_text("server:\n  port: 2222\n")
    assert standalone({**INDEPENDENT, "KICI_CONFIG": str(a)}, config_path=str(b)).port == 2222


def test_default_config_file_is_read_when_present_and_skipped_when_absent(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "orchestrator.yaml"
    s = load_settings(INDEPENDENT, "standalone", default_config_path=str(path))
    assert s.config_file is None and s.port == 4000
    path.write_text("server:\n  port: 4321\n")
    assert load_settings(INDEPENDENT, "standalone", default_config_path=str(path)).port == 4321
    path.write_text("")  # an empty default file counts as absent
    assert load_settings(INDEPENDENT, "standalone", default_config_path=str(path)).port == 4000


def test_platform_credentials_from_yaml(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("platform:\n  url: wss://p/ws\n  token: tok-from-yaml\n")
    s = server({"KICI_DATABASE_URL": DB, "KICI_CONFIG": str(path), "KICI_SECRET_KEY": HEX_KEY})
    assert s.platform_url == "wss://p/ws"
    assert s.platform_token is not None and s.platform_token.reveal() == "tok-from-yaml"
    assert "tok-from-yaml" in s.secret_values()


def test_mode_sources_that_agree_are_fine(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("instance:\n  mode: independent\n")
    env = {**INDEPENDENT, "KICI_INSTANCE_MODE": "independent", "KICI_CONFIG": str(path)}
    assert standalone(env).mode == "independent"
    assert (
        standalone({"KICI_INSTANCE_MODE": "independent", "KICI_DATABASE_URL": DB, "KICI_SECRET_KEY": HEX_KEY}).mode
        == "independent"
    )


# --- refusals ----------------------------------------------------------------------------------


def test_missing_database_url_names_the_variable_and_the_embedded_option() -> None:
    msg = refusal(standalone, {"KICI_MODE": "independent", "KICI_SECRET_KEY": HEX_KEY})
    assert msg == config.MISSING_DATABASE_MESSAGE and "\n" not in msg
    assert msg.startswith("KICI_DATABASE_URL is required") and "KICI_DATABASE_URL=embedded" in msg
    assert "coordinator" not in msg  # a term the user never set


def test_bad_database_url_does_not_echo_it() -> None:
    msg = refusal(standalone, {"KICI_MODE": "independent", "KICI_DATABASE_URL": "mysql://u:topsecret@h/db"})
    assert "KICI_DATABASE_URL" in msg and "topsecret" not in msg


@pytest.mark.parametrize(
    "key",
    ["abc", "0" * 63, base64.b64encode(b"x" * 31).decode(), "not base64 !!"],
)
def test_malformed_secret_key_is_refused_without_echoing_it(key: str) -> None:
    msg = refusal(standalone, {**INDEPENDENT, "KICI_SECRET_KEY": key})
    assert msg.startswith("KICI_SECRET_KEY is malformed")
    assert key not in msg and "\n" not in msg


def test_wrong_length_key_reports_byte_count() -> None:
    msg = refusal(standalone, {**INDEPENDENT, "KICI_SECRET_KEY": base64.b64encode(b"x" * 16).decode()})
    assert "must be exactly 32 bytes, got 16 bytes" in msg


def test_empty_and_missing_key_files(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "is empty" in refusal(standalone, {**NO_KEY, "KICI_SECRET_KEY_FILE": str(empty)})
    msg = refusal(standalone, {**NO_KEY, "KICI_SECRET_KEY_FILE": str(tmp_path / "nope")})
    assert msg.startswith("KICI_SECRET_KEY_FILE")


def test_server_refuses_independent_naming_standalone() -> None:
    msg = refusal(server, INDEPENDENT)
    assert "kici-server requires KICI_MODE=platform or KICI_MODE=hybrid" in msg and "kici-standalone" in msg


@pytest.mark.parametrize("mode", ["platform", "hybrid"])
def test_standalone_refuses_platform_and_hybrid_naming_server(mode: str) -> None:
    msg = refusal(standalone, {**PLATFORM, "KICI_MODE": mode})
    assert "kici-standalone requires KICI_MODE=independent" in msg and "kici-server" in msg


def test_standalone_refuses_default_mode_and_explains() -> None:
    msg = refusal(standalone, {"KICI_DATABASE_URL": DB})
    assert "defaults to platform" in msg


def test_mode_conflict_between_env_vars_names_both() -> None:
    msg = refusal(server, {**PLATFORM, "KICI_INSTANCE_MODE": "hybrid"})
    assert msg == "conflicting mode settings: KICI_MODE=platform vs KICI_INSTANCE_MODE=hybrid"


def test_mode_conflict_with_yaml_names_both(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("instance:\n  mode: platform\n")
    msg = refusal(standalone, {**INDEPENDENT, "KICI_CONFIG": str(path)})
    assert "KICI_MODE=independent" in msg and "instance.mode" in msg and "=platform" in msg


@pytest.mark.parametrize("value", ["", "Platform", "standalone"])
def test_invalid_mode_is_refused(value: str) -> None:
    msg = refusal(server, {**PLATFORM, "KICI_MODE": value})
    assert msg.startswith("KICI_MODE must be one of platform, hybrid, independent")


@pytest.mark.parametrize("missing", ["KICI_PLATFORM_URL", "KICI_PLATFORM_TOKEN"])
@pytest.mark.parametrize("mode", ["platform", "hybrid"])
def test_platform_modes_need_url_and_token(mode: str, missing: str) -> None:
    env = {k: v for k, v in PLATFORM.items() if k != missing} | {"KICI_MODE": mode}
    assert refusal(server, env) == f"{missing} is required when KICI_MODE is platform or hybrid"
    assert refusal(server, env | {missing: ""}) == f"{missing} is required when KICI_MODE is platform or hybrid"


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(SettingsError) as info:
        server({"KICI_MODE": "hybrid"})
    err = info.value
    assert str(err).splitlines()[0] == "Configuration validation failed:"
    assert len(err.issues) == 4
    assert {i.split()[0] for i in err.issues} == {
        "KICI_DATABASE_URL",
        "KICI_SECRET_KEY",
        "KICI_PLATFORM_URL",
        "KICI_PLATFORM_TOKEN",
    }


def test_platform_url_scheme_checked_and_token_never_echoed() -> None:
    msg = refusal(server, {**PLATFORM, "KICI_PLATFORM_URL": "https://platform/ws"})
    assert msg.startswith("KICI_PLATFORM_URL must be a ws:// or wss:// URL")
    assert PLATFORM["KICI_PLATFORM_TOKEN"] not in msg


def test_unknown_kici_variable_refuses_with_hint() -> None:
    msg = refusal(standalone, {**INDEPENDENT, "KICI_PLATFROM_URL": "x", "KICI_ZZZZZZZZ": "y"})
    lines = msg.splitlines()
    assert lines[0] == "Unknown KICI_* env var(s) detected — refusing to start."
    assert "  - KICI_PLATFROM_URL    (did you mean KICI_PLATFORM_URL?)" in lines
    assert "  - KICI_ZZZZZZZZ    (no close match in the schema)" in lines


def test_unknown_kici_variable_only_warns_in_dev() -> None:
    s = standalone({**INDEPENDENT, "KICI_DEV": "true", "KICI_PORTT": "1"})
    assert any("KICI_PORTT" in w and "did you mean KICI_PORT?" in w for w in s.warnings)


def test_known_extras_pass_the_guard() -> None:
    env = {
        **INDEPENDENT,
        "KICI_INSTANCE_MODE": "independent",
        "KICI_ADMIN_URL": "http://x",
        "KICI_ADMIN_TOKEN": "t",
        "KICI_LOG_DIR": "/logs",
        "KICI_AGENT_ENV_FOO": "1",
        "KICI_E2E_X": "1",
        "KICI_COLD_STORE_BUCKET": "b",
        "KICI_TEST_DATABASE_URL": DB,
        "KICI_SOMETHING_ENV_PROBE": "1",
        "GITHUB_TOKEN": "not ours",
    }
    assert standalone(env).mode == "independent"


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("KICI_PORT", "abc", "KICI_PORT must be an integer, got 'abc'"),
        ("KICI_PORT", "70000", "KICI_PORT must be at most 65535, got 70000"),
        ("KICI_PORT", "", "KICI_PORT must be an integer, got ''"),
        ("KICI_DISPATCH_ACK_TIMEOUT_MS", "999", "KICI_DISPATCH_ACK_TIMEOUT_MS must be at least 1000, got 999"),
        ("KICI_LOG_LEVEL", "verbose", "KICI_LOG_LEVEL must be one of debug, info, warn, error, got 'verbose'"),
        ("KICI_AGENT_AUTH", "jwt", "KICI_AGENT_AUTH must be one of token, none, got 'jwt'"),
        ("KICI_DEV", "yes", "KICI_DEV must be one of true, false, got 'yes'"),
        ("KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER", "x", "KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER must be a number"),
        ("KICI_CLUSTER_ROLE", "worker", "KICI_CLUSTER_ROLE must be one of coordinator, got 'worker'"),
        ("NODE_ENV", "staging", "NODE_ENV must be one of development, production, test, got 'staging'"),
        ("KICI_STORAGE_TYPE", "gcs", "KICI_STORAGE_TYPE must be one of s3, filesystem, got 'gcs'"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(name: str, value: str, expect: str) -> None:
    assert refusal(standalone, {**INDEPENDENT, name: value}).startswith(expect)


def test_bad_yaml_value_names_the_yaml_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("server:\n  port: lots\n")
    msg = refusal(standalone, {**INDEPENDENT, "KICI_CONFIG": str(path)})
    assert msg.startswith(f"server.port (in {path}) must be an integer")


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"KICI_STORAGE_TYPE": "s3"}, "KICI_STORAGE_BUCKET is required when KICI_STORAGE_TYPE is s3"),
        ({"KICI_STORAGE_TYPE": "filesystem"}, "KICI_STORAGE_FS_PATH is required when KICI_STORAGE_TYPE is filesystem"),
        (
            {"KICI_STORAGE_TYPE": "filesystem", "KICI_STORAGE_FS_PATH": "rel/dir"},
            "KICI_STORAGE_FS_PATH must be an absolute path",
        ),
    ],
)
def test_storage_rules(env: dict[str, str], expect: str) -> None:
    assert refusal(standalone, {**INDEPENDENT, **env}) == expect


def test_filesystem_storage_accepted(tmp_path: pathlib.Path) -> None:
    s = standalone({**INDEPENDENT, "KICI_STORAGE_TYPE": "filesystem", "KICI_STORAGE_FS_PATH": str(tmp_path)})
    assert s.storage.type == "filesystem" and s.storage.fs_path == str(tmp_path)


# --- YAML file errors --------------------------------------------------------------------------


def test_missing_explicit_config_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "missing.yaml"
    msg = refusal(standalone, {**INDEPENDENT, "KICI_CONFIG": str(path)})
    assert msg.startswith(f"Failed to read config file at {path}:")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_config_file_not_a_mapping(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "o.yaml"
    path.write_text(text)
    msg = refusal(standalone, {**INDEPENDENT, "KICI_CONFIG": str(path)})
    assert msg == f"Config file at {path} is empty or not a valid YAML object"


def test_config_file_syntax_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("server: [unclosed\n")
    assert refusal(standalone, {**INDEPENDENT, "KICI_CONFIG": str(path)}).startswith("Failed to parse config file")


def test_unknown_yaml_keys_are_refused_with_hint(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("server:\n  prot: 1\nbogus: true\n")
    with pytest.raises(SettingsError) as info:
        standalone({**INDEPENDENT, "KICI_CONFIG": str(path)})
    err = info.value
    assert str(err).splitlines()[0] == f"Config validation failed for {path}:"
    assert "server.prot: unknown key (did you mean server.port?)" in err.issues
    assert "bogus: unknown key" in err.issues


def test_yaml_mapping_where_a_value_is_expected(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("server:\n  port:\n    a: 1\n")
    msg = refusal(standalone, {**INDEPENDENT, "KICI_CONFIG": str(path)})
    assert msg == f"Config validation failed for {path}: server.port: expected a single value, got a mapping"


# --- base path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", ""),
        ("", ""),
        ("/orchestrator", "/orchestrator"),
        ("/orchestrator/", "/orchestrator"),
        ("orchestrator", "/orchestrator"),
        ("//a//b/", "/a/b"),
        (" /x ", "/x"),
    ],
)
def test_base_path_normalisation(raw: str, expected: str) -> None:
    assert config.normalise_base_path(raw) == expected
    if raw.strip():
        assert standalone({**INDEPENDENT, "KICI_BASE_PATH": raw}).base_path == expected


@pytest.mark.parametrize("raw", ["/a?b", "/a#b", "/a b", "/../x"])
def test_bad_base_path_refused(raw: str) -> None:
    assert refusal(standalone, {**INDEPENDENT, "KICI_BASE_PATH": raw}).startswith("KICI_BASE_PATH must")


@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.text(alphabet="abcXYZ09-_.~/", min_size=0, max_size=8), max_size=5))
def test_base_path_normalisation_is_idempotent(parts: list[str]) -> None:
    raw = "/".join(parts)
    try:
        once = config.normalise_base_path(raw)
    except ValueError:
        return
    assert config.normalise_base_path(once) == once
    assert once == "" or (once.startswith("/") and not once.endswith("/") and "//" not in once)


# --- describe / secrets ------------------------------------------------------------------------


def test_describe_masks_secrets_and_repr_hides_them() -> None:
    env = {**PLATFORM, "KICI_SECRET_KEY": HEX_KEY, "KICI_BOOTSTRAP_ADMIN_TOKEN": "bootstrap-tok"}
    s = server(env)
    described = s.describe()
    text = repr(described) + repr(s) + str(s)
    for secret in ("s3cr3t-pw", HEX_KEY, "bootstrap-tok", PLATFORM["KICI_PLATFORM_TOKEN"]):
        assert secret not in text
        assert secret in s.secret_values()
    assert described["KICI_DATABASE_URL"].startswith("postgresql://kici:***@postgres:5432/kici")
    assert described["KICI_PORT"] == "4000"
    assert described["KICI_MODE"] == "platform [KICI_MODE]"
    assert described["KICI_SECRET_KEY"].startswith("***")


# --- admin CLI ---------------------------------------------------------------------------


def test_admin_settings_default_url() -> None:
    assert admin_config.load_admin_settings({}).url == "http://localhost:4000"
    a = admin_config.load_admin_settings({"KICI_ADMIN_URL": "https://h/orchestrator/", "KICI_ADMIN_TOKEN": "t"})
    assert a.url == "https://h/orchestrator" and a.token is not None and a.token.reveal() == "t"


# --- table coverage and generated docs ---------------------------------------------------------

CORE_VARS_OF_SPEC = """
KICI_MODE KICI_INSTANCE_MODE KICI_PORT KICI_SERVER_PORT KICI_BASE_PATH KICI_SERVER_BASE_PATH KICI_LOG_LEVEL
KICI_SERVER_LOG_LEVEL KICI_LOG_FORMAT KICI_DATABASE_URL KICI_AUTO_MIGRATE KICI_SECRET_KEY KICI_SECRET_KEY_FILE
KICI_SECRET_KEY_OLD KICI_SECRET_KEY_FILE_OLD KICI_BOOTSTRAP_ADMIN_TOKEN KICI_PLATFORM_URL KICI_PLATFORM_TOKEN
KICI_CONFIG KICI_DEV NODE_ENV KICI_SCALER_CONFIG_PATH KICI_SCALER_CONFIG_DIR KICI_EVENT_LOG_MAX_PAYLOAD_BYTES
KICI_LOCKFILE_CACHE_MAX KICI_LOCKFILE_CACHE_TTL_MS KICI_QUEUE_MAX_DEPTH KICI_QUEUE_TIMEOUT_MS
KICI_QUEUE_BACKPRESSURE_THRESHOLD KICI_DISPATCH_ACK_TIMEOUT_MS KICI_AGENT_AUTH KICI_AGENT_TOKEN_TTL_MS
KICI_AGENT_MAX_RECONNECT_DELAY_MS KICI_JOB_HEARTBEAT_INTERVAL_MS KICI_STALE_DETECTOR_SCAN_INTERVAL_MS
KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER KICI_WEBHOOK_PAYLOAD_DIR KICI_DATA_DIR KICI_WEBHOOK_PUBLIC_URL
KICI_PG_CUSTOMER_SECRETS KICI_CLUSTER_INSTANCE_ID KICI_STORAGE_TYPE KICI_STORAGE_BUCKET KICI_STORAGE_PREFIX
KICI_STORAGE_REGION KICI_STORAGE_ENDPOINT KICI_STORAGE_EXTERNAL_ENDPOINT KICI_STORAGE_UPLOAD_ENDPOINT
KICI_STORAGE_FORCE_PATH_STYLE KICI_STORAGE_LOG_BUCKET KICI_STORAGE_FS_PATH KICI_STORAGE_FS_BASE_URL
KICI_STORAGE_PATH KICI_LOCKFILE_MAX_BYTES KICI_HOST GITHUB_API_URL KICI_ORCHESTRATOR_URL KICI_AGENT_TOKEN
KICI_AGENT_LABELS KICI_AGENT_GRACE_PERIOD_SECONDS KICI_AGENT_MAX_CONCURRENCY KICI_AGENT_ID KICI_AGENT_WORK_DIR
KICI_ADMIN_URL KICI_ADMIN_TOKEN
""".split()


def test_every_spec_variable_is_in_the_table() -> None:
    missing = [n for n in CORE_VARS_OF_SPEC if n not in config_vars.BY_NAME]
    assert missing == []


def test_table_is_well_formed() -> None:
    names = [v.name for v in config_vars.VARIABLES]
    assert len(names) == len(set(names))
    assert not set(names) & set(config_vars.ACCEPTED_NAMES)
    for var in config_vars.VARIABLES:
        assert var.description.strip(), var.name
        assert var.alias_of is None or var.alias_of in config_vars.BY_NAME
        if var.kind in ("enum", "bool"):
            assert var.choices and (var.default is None or var.default in var.choices), var.name
        if var.kind == "int" and var.default is not None:
            int(var.default)


def test_committed_docs_match_the_generator() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == config_docs.render_markdown(), "run: python tools/gen_config_docs.py"


def test_every_variable_is_documented() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in [v.name for v in config_vars.VARIABLES] + list(config_vars.ACCEPTED_NAMES):
        assert f"`{name}`" in committed, name


def test_generator_check_mode(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "tools" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
    monkeypatch.setattr(module, "TARGET", tmp_path / "configuration.md")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0


def test_from_process_env_reads_the_real_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    for name, value in INDEPENDENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KICI_ORCHESTRATOR_URL", "http://orch:4000")
    path = tmp_path / "o.yaml"
    path.write_text("server:\n  port: 4400\n")
    monkeypatch.setenv("KICI_CONFIG", str(path))
    s = config.from_process_env("standalone")
    assert s.mode == "independent" and s.orchestrator_url == "http://orch:4000" and s.port == 4400
    monkeypatch.setenv("KICI_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="Failed to read config file"):
        config.from_process_env("standalone")
