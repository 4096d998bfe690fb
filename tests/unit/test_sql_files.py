"""The named SQL blocks: the loader's rules, and every shipped block is called by name from the code (a block
nothing runs is dead code that still has to be kept in step with the schema)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kici_adapters import sqlfiles

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "kici_adapters"


def _sql_files() -> list[Path]:
    return sorted(p for p in ADAPTERS.rglob("*.sql") if "migrations" not in p.parts)


def test_blocks_are_split_by_name_lines_keeping_inner_comments() -> None:
    text = "-- header comment\n\n-- name: one\n-- why\nSELECT 1\n\n-- name: two\nSELECT 2;\nSELECT 3\n"
    assert sqlfiles.parse(text) == {"one": "-- why\nSELECT 1", "two": "SELECT 2;\nSELECT 3"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "duplicate query name 'a'"),
        ("-- name: a\n\n-- name: b\nSELECT 2\n", "query 'a' is empty"),
    ],
)
def test_duplicate_and_empty_blocks_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sqlfiles.parse(text)


def test_every_shipped_block_is_called_by_name() -> None:
    files = _sql_files()
    assert ADAPTERS / "postgres" / "queries.sql" in files
    code = "\n".join(
        p.read_text(encoding="utf-8") for top in ("kici_adapters", "kici_runtime") for p in (ROOT / top).rglob("*.py")
    )
    unused = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in sqlfiles.parse(path.read_text(encoding="utf-8"))
        if not re.search(rf"""["']{name}["']""", code)
    ]
    assert unused == []


def test_every_name_the_code_asks_for_is_in_the_file_it_loads() -> None:
    missing = []
    shared = sqlfiles.parse((ADAPTERS / "postgres" / "queries.sql").read_text(encoding="utf-8"))
    for path in sorted(ADAPTERS.rglob("*.py")):
        code = path.read_text(encoding="utf-8")
        loaded = re.search(r"_SQL = .*\"(\w+\.sql)\"", code)  # the file of the module's own blocks, if any
        own = sqlfiles.parse((path.parent / loaded.group(1)).read_text(encoding="utf-8")) if loaded else {}
        missing += [
            f"{path.relative_to(ROOT)}: {name}" for name in re.findall(r"""_SQL\["(\w+)"\]""", code) if name not in own
        ]
        missing += [
            f"{path.relative_to(ROOT)}: q({name})"
            for name in re.findall(r"""\bq\("(\w+)"\)""", code)
            if name not in shared
        ]
    assert missing == []
