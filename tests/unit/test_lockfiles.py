"""The committed dependency locks cover pyproject.toml and are what every install uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, spec
    return canonical(match.group(1))


def pins(lock: Path) -> dict[str, list[str]]:
    """Package name -> the ``--hash`` values of its pinned version(s)."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            current = canonical(match.group(1))
            out.setdefault(current, [])
            continue
        stripped = line.strip()
        if stripped.startswith("--hash=sha256:") and current is not None:
            out[current].append(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif not stripped.startswith("--hash"):
            current = None
    return out


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        data = tomllib.load(fh)["project"]
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("dev.lock", ("embedded", "s3", "dev")), ("runtime.lock", ("s3",))],
)
def test_lock_pins_every_declared_dependency_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(REQS / lock)
    meta = project()
    deps = list(meta["dependencies"])  # type: ignore[call-overload]
    optional = meta["optional-dependencies"]
    assert isinstance(optional, dict)
    for extra in extras:
        deps += [d for d in optional[extra] if not d.startswith("kici[")]
    missing = sorted({requirement_name(d) for d in deps} - set(locked))
    assert not missing, f"{lock} lacks {missing}: run `make lock`"
    unhashed = sorted(name for name, hashes in locked.items() if not hashes)
    assert not unhashed, f"{lock} pins without hashes: {unhashed}"
    for backend in ("setuptools", "wheel"):
        assert backend in locked, f"{lock} lacks the build backend {backend}"


def test_makefile_installs_only_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installs = [line.strip() for line in makefile.splitlines() if "pip install" in line]
    assert installs, "the Makefile installs nothing"
    for line in installs:
        assert "--no-deps" in line, f"an install that resolves dependencies itself: {line}"
    assert any("--require-hashes" in line and "$(LOCK)" in line for line in installs), installs
    assert "requirements/dev.lock" in makefile
    assert re.search(r"^lock:", makefile, re.MULTILINE), "no `make lock` target"


def test_ci_runs_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in script
