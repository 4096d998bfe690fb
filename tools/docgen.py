"""Shared command line of the doc generators: write the page, or with --check fail when it is stale."""

from __future__ import annotations

import argparse
import pathlib
import sys


def main(
    target: pathlib.Path,
    root: pathlib.Path,
    text: str,
    script: str,
    description: str | None,
    argv: list[str] | None = None,
) -> int:
    """Write ``text`` to ``target`` (or check it is current); returns the exit status."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args(argv)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{target.relative_to(root)} is stale: run python tools/{script}", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target.relative_to(root)}")
    return 0
