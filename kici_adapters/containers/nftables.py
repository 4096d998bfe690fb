"""Running ``nft``: the start-up check, the ``ip kici`` table, per-container rules and their removal.

:func:`check_nftables` runs ``nft list tables`` (10 s timeout) and turns a failure into the deploy guide's
fatal messages (:data:`MISSING`, :data:`DENIED`, else ``nftables validation failed: <text>``). The command
texts themselves come from :mod:`kici_core.netrules`. ``nft`` is looked up on ``PATH``; ``prefix`` runs it
through another program (``sudo -n``, or ``nsenter --net=...`` to act on another network namespace).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

import anyio

from kici_core import errors, netrules

__all__ = ["DENIED", "MISSING", "NftRunner", "NftablesUnavailable", "check_nftables", "classify_failure"]

log = logging.getLogger("kici.scaler")

MISSING = (
    "nftables binary not found at /usr/sbin/nft. The orchestrator container image must include nftables "
    "(apk add nftables). Network isolation for agents cannot be established without nftables."
)
DENIED = (
    "nftables operation denied -- missing NET_ADMIN capability. Start the orchestrator container with "
    "--cap-add=NET_ADMIN. Network isolation for agents requires this capability."
)
CHECK_TIMEOUT = 10.0


class NftablesUnavailable(errors.ConfigError):
    """The nftables start-up check failed: the orchestrator must not start (exit 1, no backoff)."""

    exit_code = 1


def classify_failure(text: str) -> str:
    """The fatal message for a failed ``nft`` run whose error text is ``text``."""
    if "ENOENT" in text or "not found" in text:
        return MISSING
    if "EPERM" in text or "Operation not permitted" in text:
        return DENIED
    return f"nftables validation failed: {text.strip()}"


class NftRunner:
    """Runs ``nft`` with argument lists.

    Args:
        binary: the program name (looked up on ``PATH``) or a path.
        prefix: a command put in front (e.g. ``["sudo", "-n"]``).
        timeout: seconds per invocation.
    """

    def __init__(self, *, binary: str = "nft", prefix: Sequence[str] = (), timeout: float = CHECK_TIMEOUT) -> None:
        self.binary = binary
        self.prefix = tuple(prefix)
        self.timeout = timeout

    async def run(self, args: Sequence[str]) -> str:
        """Run ``nft <args>``; its standard output.

        Raises:
            FileNotFoundError: ``nft`` (or the prefix program) is not installed.
            NftablesUnavailable: it failed; the message carries its error output.
        """
        program = shutil.which(self.binary) if not self.prefix else self.binary
        if program is None:
            raise FileNotFoundError(f"ENOENT: {self.binary} not found on PATH")
        argv = [*self.prefix, program, *args]
        try:
            with anyio.fail_after(self.timeout):
                result = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
        except TimeoutError:
            raise NftablesUnavailable(f"nft {' '.join(args[:2])} timed out after {self.timeout:g} s") from None
        if result.returncode != 0:
            text = (result.stderr or result.stdout).decode(errors="replace").strip()
            raise NftablesUnavailable(text or f"nft exited with status {result.returncode}")
        return result.stdout.decode(errors="replace")

    async def setup_table(self) -> None:
        """Create the ``ip kici`` table and its chains (idempotent)."""
        for args in netrules.table_commands():
            await self.run(args)

    async def add_container(self, ip: str, *, allowlist: Sequence[str] = (), deny_all: bool = False) -> None:
        """Install the rules of one container (placement order of :func:`netrules.container_rules`)."""
        for args in netrules.container_rules(ip, allowlist=allowlist, deny_all=deny_all):
            await self.run(args)

    async def remove_container(self, ip: str) -> int:
        """Delete every ``forward`` rule naming ``ip`` (best effort); how many were deleted."""
        try:
            listing = await self.run(["-a", "list", "chain", "ip", netrules.TABLE, "forward"])
        except (OSError, NftablesUnavailable) as exc:
            log.warning("could not list nftables rules", extra={"ip": ip, "error": str(exc)})
            return 0
        deleted = 0
        for args in netrules.delete_commands(listing, ip):
            try:
                await self.run(args)
                deleted += 1
            except (OSError, NftablesUnavailable) as exc:
                log.warning("could not delete an nftables rule", extra={"ip": ip, "error": str(exc)})
        return deleted


async def check_nftables(runner: NftRunner) -> None:
    """The start-up check (operations spec §7.3): ``nft list tables`` must work.

    Raises:
        NftablesUnavailable: with the guide's exact message for a missing binary or a missing NET_ADMIN
            capability, else ``nftables validation failed: <text>``.
    """
    try:
        await runner.run(["list", "tables"])
    except FileNotFoundError as exc:
        raise NftablesUnavailable(classify_failure(f"ENOENT {exc}")) from None
    except NftablesUnavailable as exc:
        raise NftablesUnavailable(classify_failure(exc.message)) from None
    except OSError as exc:
        raise NftablesUnavailable(classify_failure(str(exc))) from None
