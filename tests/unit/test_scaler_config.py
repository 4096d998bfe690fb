"""``scalers.yaml`` + ``scalers.d``: validation errors name the file and the field; start-up refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from kici_runtime.orchestrator.scaler import startup
from kici_runtime.orchestrator.scaler.config import ScalerConfigError, load_scaler_config, parse_memory

MAIN = """\
version: 1
globalMaxAgents: 10
defaults: { resources: { memory: "2g", cpus: 2 } }
scalers:
  - name: container-default
    type: container
    maxAgents: 4
    socketPath: /var/run/docker.sock
    orchestratorUrl: ws://host.docker.internal:4000/ws
    extraHosts: ["host.docker.internal:host-gateway"]
    warmPool: { enabled: true, size: 1, idleTimeoutSeconds: 60 }
    labelSets:
      - labels: [linux, container]
        image: quay.io/kici-dev/kici-agent:0.1.24
        imagePullPolicy: IfNotPresent
        env: { MY_VAR: x }
        resources: { limits: { memory: "4g", cpus: 1.5 } }
        networkPolicy: { allowlist: ["10.0.5.0/24"], denyAll: true }
      - labels: [linux, small]
        image: quay.io/kici-dev/kici-agent:0.1.24
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_documented_example_loads_with_defaults_and_drop_ins(tmp_path: Path) -> None:
    main = write(tmp_path / "scalers.yaml", MAIN)
    write(
        tmp_path / "scalers.d" / "gpu.yaml",
        """\
scalers:
  - name: gpu
    type: container
    maxAgents: 1
    host: tcp://10.0.0.5:2376
    networkIsolation: false
    labelSets: [{ labels: [gpu], image: "kici-agent:gpu", imagePullPolicy: Never }]
""",
    )
    config = load_scaler_config(main)
    assert config.global_max_agents == 10
    first, gpu = config.scalers
    assert first.name == "container-default" and first.max_agents == 4
    assert first.warm_pool.size == 1 and first.warm_pool.idle_timeout == 60
    big, small = first.label_sets
    assert big.memory_bytes == 4 * 1024**3 and big.nano_cpus == 1_500_000_000
    assert small.memory_bytes == 2 * 1024**3 and small.nano_cpus == 2_000_000_000  # from defaults
    assert big.allowlist == ("10.0.5.0/24",) and big.deny_all and big.env == (("MY_VAR", "x"),)
    assert gpu.host == "tcp://10.0.0.5:2376" and not gpu.network_isolation
    assert gpu.label_sets[0].pull_policy == "Never" and gpu.source.endswith("gpu.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scalers: []\n", "{main}: version: Field required (must be 1)"),
        ("version: 2\nscalers: []\n", "{main}: version: Input should be 1"),
        (
            "version: 1\nscalers:\n  - {name: a, type: container, maxAgents: 1, labelSets: [{labels: [x]}]}\n",
            "{main}: scalers[0].labelSets[0].image: Field required",
        ),
        (
            "version: 1\nscalers:\n"
            "  - {name: a, type: container, maxAgents: 0, labelSets: [{labels: [x], image: i}]}\n",
            "{main}: scalers[0].maxAgents: Input should be greater than or equal to 1",
        ),
        (
            "version: 1\nscalers:\n  - {name: a, type: container, maxAgents: 1,\n"
            "     labelSets: [{labels: ['kici:os:linux'], image: i}]}\n",
            "{main}: scalers[0].labelSets[0].labels: labels must not use the reserved 'kici:' prefix: kici:os:linux",
        ),
        (
            "version: 1\nscalers:\n  - {name: a, type: container, maxAgents: 1, labelSets: [{labels: [x], image: i,\n"
            "     networkPolicy: {allowlist: ['10.0.0.0/8; flush ruleset']}}]}\n",
            "{main}: scalers[0].labelSets[0].networkPolicy.allowlist: not an IPv4 address or CIDR: "
            "'10.0.0.0/8; flush ruleset'",
        ),
        (
            "version: 1\nscalers:\n  - {name: a, type: container, maxAgents: 1, labelSets: [{labels: [x], image: i,\n"
            "     resources: {memory: lots}}]}\n",
            "{main}: scalers[0].labelSets[0].resources.memory: not a memory size: 'lots' (use e.g. 512m or 2g)",
        ),
        (
            "version: 1\nscalers:\n  - {name: a, type: firecracker, maxAgents: 1}\n",
            "{main}: scalers[0].type: 'firecracker' scalers are not supported;"
            " this orchestrator runs 'container' scalers",
        ),
        (
            "version: 1\nscalers:\n  - {name: a, type: container, maxAgents: 1, labelSets: [{labels: [x], image: i}],"
            " colour: red}\n",
            "{main}: scalers[0].colour: Extra inputs are not permitted",
        ),
        ("version: 1\nscalers: [\n", "{main}: not valid YAML: "),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    main = write(tmp_path / "scalers.yaml", text)
    with pytest.raises(ScalerConfigError) as info:
        load_scaler_config(main)
    assert any(issue.startswith(message.format(main=main)) for issue in info.value.issues), info.value.issues


def test_a_bad_drop_in_is_named_and_names_repeat_across_files(tmp_path: Path) -> None:
    main = write(tmp_path / "scalers.yaml", MAIN)
    bad = write(
        tmp_path / "scalers.d" / "10-bad.yaml",
        "scalers:\n  - {name: container-default, type: container, maxAgents: 1,"
        " labelSets: [{labels: [z], image: i}]}\n  - {name: b, type: container, maxAgents: 1,"
        " labelSets: [{labels: [y], image: i, imagePullPolicy: Sometimes}]}\n",
    )
    with pytest.raises(ScalerConfigError) as info:
        load_scaler_config(main)
    assert info.value.issues == (
        f"{bad}: scalers[1].labelSets[0].imagePullPolicy: Input should be 'Always', 'IfNotPresent' or 'Never'",
    )
    write(
        bad,
        "scalers:\n  - {name: container-default, type: container, maxAgents: 1,"
        " labelSets: [{labels: [z], image: i}]}\n",
    )
    with pytest.raises(ScalerConfigError) as info:
        load_scaler_config(main)
    assert info.value.issues == (
        f"{bad}: scalers[0].name: duplicate scaler name 'container-default' (first in {main})",
    )


def test_memory_sizes() -> None:
    assert parse_memory("512m") == 512 * 1024**2
    assert parse_memory("2G") == 2 * 1024**3
    assert parse_memory("1.5g") == int(1.5 * 1024**3)
    assert parse_memory(4096) == 4096


def test_overlapping_label_sets_refuse_start_with_a_back_off(tmp_path: Path) -> None:
    main = write(tmp_path / "scalers.yaml", MAIN + "      - labels: [container, linux]\n        image: other\n")
    with pytest.raises(startup.ScalerStartupError) as info:
        startup.check_config(load_scaler_config(main), which=lambda _: "/usr/bin/docker")
    assert info.value.message == (
        "Scaler config has label-set overlaps:\n"
        "  - container-default.labelSets[0] and container-default.labelSets[2] both provide [container, linux]"
    )
    assert info.value.backoff_seconds == 30 and info.value.exit_code == 1


def test_a_scaler_without_socket_or_host_needs_docker_or_podman_on_path(tmp_path: Path) -> None:
    main = write(tmp_path / "scalers.yaml", MAIN.replace("    socketPath: /var/run/docker.sock\n", ""))
    config = load_scaler_config(main)
    with pytest.raises(startup.ScalerStartupError) as info:
        startup.check_config(config, which=lambda _: None)
    assert info.value.message == (
        "Required tools validation failed:\n"
        "  - scaler container-default: needs docker or podman on PATH (or set socketPath or host)"
    )
    assert info.value.backoff_seconds == 30
    startup.check_config(config, which=lambda name: "/usr/bin/podman" if name == "podman" else None)
