"""Write docs/configuration.md from the configuration variable table.

Usage: ``python tools/gen_config_docs.py`` (write) or ``python tools/gen_config_docs.py --check``
(exit 1 when the committed file is stale).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kici_runtime import config_docs  # noqa: E402

TARGET = ROOT / "docs" / "configuration.md"


def main(argv: list[str] | None = None) -> int:
    """Generate (or check) the configuration reference; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args(argv)
    text = config_docs.render_markdown()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python tools/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
