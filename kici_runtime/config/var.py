"""One row of the variable table: :class:`Var`, its kinds, tiers and consumers, and :func:`row`.

The rows themselves live in the ``vars_*`` modules, one per group of sections; :mod:`kici_runtime.config.vars`
joins them into ``VARIABLES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["str", "int", "float", "bool", "enum", "path", "url"]
Tier = Literal["core", "extended"]
Consumer = Literal["server", "standalone", "agent", "admin"]

ORCH: tuple[Consumer, ...] = ("server", "standalone")
SERVER: tuple[Consumer, ...] = ("server",)
AGENT: tuple[Consumer, ...] = ("agent",)
ADMIN: tuple[Consumer, ...] = ("admin",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Var:
    """One environment variable.

    ``default`` is the textual default (``None`` = unset). ``alias_of`` names the primary variable
    this one is an alias for; the primary wins when both are set. ``yaml`` is the dotted key of the
    YAML file (§1.2) that supplies the value when no env var is set. ``modes`` says in which
    operating modes the variable matters (free text for the docs).
    """

    name: str
    kind: Kind
    default: str | None
    tier: Tier
    description: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    yaml: str | None = None
    alias_of: str | None = None
    used_by: tuple[Consumer, ...] = ORCH
    modes: str = "all"


_BOOL = ("true", "false")


def row(name: str, kind: Kind, default: str | None, tier: Tier, description: str, **kw: object) -> Var:
    """A table row; a ``bool`` variable accepts ``true``/``false`` unless ``choices`` says otherwise."""
    if kind == "bool" and "choices" not in kw:
        kw["choices"] = _BOOL
    return Var(name=name, kind=kind, default=default, tier=tier, description=description, **kw)  # type: ignore[arg-type]
