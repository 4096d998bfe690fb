"""The NET_ADMIN / nftables start-up check and the isolation rules, against the real ``nft`` binary.

The three outcomes of the check: ``nft`` present and permitted (run in a fresh network namespace, so the
host's ruleset is never touched), missing (a ``PATH`` without it), and denied (run as an unprivileged user).
Then the way an operator meets it: ``kici-standalone`` with a scaler configured refuses to start with the
deploy guide's exact messages. Rules are added and removed in a private network namespace held open by a
``sleep`` process. The machine needs ``nftables`` (``.ci/run`` installs it) and root (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kici_adapters.containers.nftables import DENIED, MISSING, NftablesUnavailable, NftRunner, check_nftables
from tests.support.orchestrator import BIN, clean_env

pytestmark = pytest.mark.anyio

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# root without the capability, like a container started without --cap-add=NET_ADMIN; unlike another user, it can
# run the checkout's programs when the checkout is in a private directory (/root, mktemp -d)
NO_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin"]


def test_machine_prerequisites() -> None:
    assert shutil.which("nft") is not None, "install nftables (apt-get install -y nftables)"
    assert os.geteuid() == 0, "the nftables tests run as root, like CI"


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A private network namespace, as an ``nsenter`` prefix."""
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "echo ready; exec sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # printed inside the new namespace
        assert line == "ready\n", f"unshare --net did not start: {line!r}"
        yield ["nsenter", f"--net=/proc/{holder.pid}/ns/net"]
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


async def test_present_and_permitted(netns: list[str]) -> None:
    await check_nftables(NftRunner(prefix=netns))


async def test_missing_binary_gives_the_guides_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NftablesUnavailable) as info:
        await check_nftables(NftRunner())
    assert info.value.message == MISSING
    assert info.value.message.startswith("nftables binary not found at /usr/sbin/nft.")


async def test_denied_without_net_admin_gives_the_guides_message() -> None:
    with pytest.raises(NftablesUnavailable) as info:
        await check_nftables(NftRunner(prefix=NOBODY))
    assert info.value.message == DENIED
    assert info.value.message.startswith("nftables operation denied -- missing NET_ADMIN capability.")


async def test_any_other_failure_is_validation_failed(netns: list[str]) -> None:
    runner = NftRunner(prefix=netns)
    with pytest.raises(NftablesUnavailable) as info:
        await check_nftables(NftRunner(prefix=[*netns, "nft", "--file", "/nonexistent/kici.nft"]))
    assert info.value.message.startswith("nftables validation failed: ")
    await runner.run(["list", "tables"])


async def test_rules_are_added_in_order_and_removed_by_whole_address(netns: list[str]) -> None:
    nft = NftRunner(prefix=netns)
    await nft.setup_table()
    await nft.setup_table()  # idempotent
    await nft.add_container("172.30.0.2", allowlist=["10.0.5.0/24"])
    await nft.add_container("172.30.0.20", deny_all=True)
    chain = await nft.run(["list", "chain", "ip", "kici", "forward"])
    lines = [line.strip() for line in chain.splitlines() if "saddr" in line]
    assert lines == [
        "ip saddr 172.30.0.20 ip daddr 172.30.0.1 accept",
        "ip saddr 172.30.0.2 ip daddr 10.0.5.0/24 accept",
        "ip saddr 172.30.0.2 ip daddr 172.30.0.1 accept",
        "ip saddr 172.30.0.2 ip daddr 10.0.0.0/8 drop",
        "ip saddr 172.30.0.2 ip daddr 172.16.0.0/12 drop",
        "ip saddr 172.30.0.2 ip daddr 192.168.0.0/16 drop",
        "ip saddr 172.30.0.2 ip daddr 169.254.0.0/16 drop",
        "ip saddr 172.30.0.20 ip daddr 10.0.0.0/8 drop",
        "ip saddr 172.30.0.20 ip daddr 172.16.0.0/12 drop",
        "ip saddr 172.30.0.20 ip daddr 192.168.0.0/16 drop",
        "ip saddr 172.30.0.20 ip daddr 169.254.0.0/16 drop",
        "ip saddr 172.30.0.20 drop",
    ]
    assert "output" in await nft.run(["list", "table", "ip", "kici"])
    assert await nft.remove_container("172.30.0.2") == 6
    chain = await nft.run(["list", "chain", "ip", "kici", "forward"])
    left = [line.strip() for line in chain.splitlines() if "saddr" in line]
    assert left and all(line.startswith("ip saddr 172.30.0.20 ") for line in left) and len(left) == 6
    assert await nft.remove_container("172.30.0.2") == 0


# ------------------------------------------------------------------------------------------------ start-up
def _boot(env_path: str, *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Start ``kici-standalone`` with a container scaler configured; it must refuse before opening the database."""
    folder = Path(tempfile.mkdtemp(prefix="kici-scaler-"))
    folder.chmod(0o755)  # readable by the unprivileged user too
    config = folder / "scalers.yaml"
    config.write_text(
        "version: 1\nscalers:\n  - name: c\n    type: container\n    maxAgents: 1\n"
        f"    socketPath: {folder / 'docker.sock'}\n"
        "    labelSets: [{labels: [linux], image: kici-agent:test}]\n"
    )
    config.chmod(0o644)
    env = clean_env(
        PATH=env_path,
        KICI_MODE="independent",
        KICI_SCALER_CONFIG_PATH=str(config),
        KICI_DATABASE_URL="postgresql://kici@127.0.0.1:1/never",
        KICI_SECRET_KEY="ab" * 32,
        KICI_DATA_DIR=str(folder / "data"),
        KICI_PORT="0",
        HOME=str(folder),
    )
    try:
        return subprocess.run(
            [*(prefix or []), str(BIN / "kici-standalone")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_standalone_refuses_to_start_without_nft_on_path(tmp_path: Path) -> None:
    result = _boot(str(BIN))  # the project's programs, but no nft
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"kici-standalone: {MISSING}" in result.stderr.splitlines()


def test_standalone_refuses_to_start_without_net_admin() -> None:
    result = _boot(f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", prefix=NO_NET_ADMIN)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"kici-standalone: {DENIED}" in result.stderr.splitlines()
