"""The bootstrap admin token, ensured at startup (operations spec §2.1).

- ``KICI_BOOTSTRAP_ADMIN_TOKEN`` set: its sha256 is upserted as the ``label='bootstrap'`` owner token
  (a changed value replaces the old hash, so the old value stops working: that is how the token is rotated).
  A value that was revoked stays revoked after restarts (a warning is logged). The value is never logged.
- unset, and no active admin token exists: a token is generated, stored hashed, and printed once to stdout
  as ``\\n  KICI Admin Token: <token>\\n``. If tokens exist, nothing happens.
"""

from __future__ import annotations

import logging
import secrets as pysecrets
import sys
from collections.abc import Callable
from typing import TextIO

from kici_core.ports import TokenStore
from kici_core.token_records import AdminToken
from kici_runtime.orchestrator.admin.auth import token_hash

log = logging.getLogger("kici.admin")

__all__ = ["ensure_bootstrap_token"]


async def ensure_bootstrap_token(
    tokens: TokenStore,
    env_token: str | None,
    *,
    new_id: Callable[[], str],
    out: TextIO | None = None,
    generate: Callable[[], str] = lambda: pysecrets.token_hex(32),
) -> str | None:
    """Ensure an admin token exists; returns the generated token (None when none was generated).

    Args:
        tokens: the token store.
        env_token: the value of ``KICI_BOOTSTRAP_ADMIN_TOKEN`` (None or empty when unset).
        new_id: id generator for a new token row.
        out: where a generated token is printed (stdout by default).
        generate: token generator (64 hex characters by default).
    """
    if env_token:
        if await tokens.ensure_bootstrap_admin_token(token_hash(env_token), new_id()):
            log.info("Bootstrap admin token ensured")
        else:
            log.warning(
                "KICI_BOOTSTRAP_ADMIN_TOKEN was revoked and stays revoked; "
                "set a new value to rotate the bootstrap token"
            )
        return None
    if await tokens.has_active_admin_token():
        return None
    token = generate()
    await tokens.create_admin_token(AdminToken(id=new_id(), label="bootstrap", role="owner"), token_hash(token))
    log.info("Bootstrap admin token generated (printed once on stdout)")
    stream = out if out is not None else sys.stdout
    stream.write(f"\n  KICI Admin Token: {token}\n")
    stream.flush()
    return token
