"""Write docs/configuration.md from the configuration variable table.

Usage: ``python tools/gen_config_docs.py`` (write) or ``python tools/gen_config_docs.py --check``
(exit 1 when the committed file is stale).
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kici_runtime.config import docs as config_docs  # noqa: E402
from tools import docgen  # noqa: E402

TARGET = ROOT / "docs" / "configuration.md"


def main(argv: list[str] | None = None) -> int:
    """Generate (or check) the configuration reference; returns the exit status."""
    return docgen.main(TARGET, ROOT, config_docs.render_markdown(), "gen_config_docs.py", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
