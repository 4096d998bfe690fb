"""The event loop the orchestrator's processes (serving process and processing children) run on."""

from __future__ import annotations


def backend_options() -> dict[str, bool]:
    """Run on uvloop when it is installed (a faster event loop; asyncio semantics are unchanged)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}
