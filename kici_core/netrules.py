"""Network isolation of scaler containers: the nftables commands, as argument lists, and rule removal.

Every container the scaler starts joins the bridge network :data:`NETWORK` (:data:`SUBNET`, gateway
:data:`GATEWAY`). The table ``ip kici`` holds two accept-policy chains, ``forward`` and ``output``; per
container, rules on its source address go into ``forward`` in this placement order:

1. ``insert`` (chain head): accept to the gateway (the orchestrator is reached through it), then accept to
   each ``networkPolicy.allowlist`` entry;
2. ``add`` (tail): drop to the private ranges 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, then drop to the
   link-local range 169.254.0.0/16 (cloud metadata), then, with ``denyAll``, drop everything else.

Removal lists the chain with handles (``nft -a list chain ip kici forward``) and deletes every rule whose line
holds the container's address as a whole token (``10.0.0.2`` never matches ``10.0.0.20``), highest handle
first. Nothing here runs a command.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from kici_core import errors

__all__ = [
    "GATEWAY",
    "NETWORK",
    "PRIVATE_RANGES",
    "SUBNET",
    "TABLE",
    "container_rules",
    "delete_commands",
    "handles_for",
    "parse_cidr",
    "table_commands",
]

NETWORK = "kici-agent-net"
SUBNET = "172.30.0.0/16"
GATEWAY = "172.30.0.1"
TABLE = "kici"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
METADATA_RANGE = "169.254.0.0/16"
_HANDLE = re.compile(r"# handle (\d+)\s*$")


def parse_cidr(text: str) -> str:
    """``text`` as a normalised IPv4 address or network; raises ``InvalidInput`` for anything else (the
    value becomes an nft argument, so nothing but an address may pass)."""
    try:
        net = ipaddress.IPv4Network(text.strip(), strict=False)
    except ValueError:
        raise errors.InvalidInput(f"not an IPv4 address or CIDR: {text!r}") from None
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def _ip(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise errors.InvalidInput(f"not an IPv4 address: {text!r}") from None


def table_commands() -> list[list[str]]:
    """Create the ``ip kici`` table and its two chains (``nft add`` is idempotent for both)."""
    return [
        ["add", "table", "ip", TABLE],
        ["add", "chain", "ip", TABLE, "forward", "{ type filter hook forward priority 0; policy accept; }"],
        ["add", "chain", "ip", TABLE, "output", "{ type filter hook output priority 0; policy accept; }"],
    ]


def container_rules(ip: str, *, allowlist: Sequence[str] = (), deny_all: bool = False) -> list[list[str]]:
    """The ``nft`` argument lists for one container, in placement order. Raises ``InvalidInput`` for an
    address or allowlist entry that is not IPv4."""
    src = ["ip", "saddr", _ip(ip)]
    head = ["insert", "rule", "ip", TABLE, "forward"]
    tail = ["add", "rule", "ip", TABLE, "forward"]
    out = [[*head, *src, "ip", "daddr", GATEWAY, "accept"]]
    out += [[*head, *src, "ip", "daddr", parse_cidr(cidr), "accept"] for cidr in allowlist]
    out += [[*tail, *src, "ip", "daddr", cidr, "drop"] for cidr in (*PRIVATE_RANGES, METADATA_RANGE)]
    if deny_all:
        out.append([*tail, *src, "drop"])
    return out


def _has_token(line: str, ip: str) -> bool:
    for match in re.finditer(re.escape(ip), line):
        before = line[match.start() - 1] if match.start() > 0 else " "
        after = line[match.end()] if match.end() < len(line) else " "
        if (before.isspace() or before in "\"'") and (after.isspace() or after in "\"'"):
            return True
    return False


def handles_for(listing: str, ip: str) -> list[int]:
    """Handles of the rules in ``nft -a list chain`` output that name ``ip`` as a whole token, highest
    first (deleting from the end keeps the remaining handles valid)."""
    handles = []
    for line in listing.splitlines():
        match = _HANDLE.search(line)
        if match and _has_token(line[: match.start()], ip):
            handles.append(int(match.group(1)))
    return sorted(handles, reverse=True)


def delete_commands(listing: str, ip: str) -> list[list[str]]:
    """``nft delete rule`` argument lists removing every rule of ``ip`` from the ``forward`` chain."""
    return [["delete", "rule", "ip", TABLE, "forward", "handle", str(h)] for h in handles_for(listing, ip)]
