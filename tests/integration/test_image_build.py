"""The container image, checked without Docker.

The Dockerfile's structure is read and asserted (multi-stage, runtime stage last, non-root user, nftables,
port, health check, default command, the node shim, the packages/orchestrator copy). Then the install steps
it runs are repeated on this machine: build the project's wheel with ``pip wheel --no-deps`` (as the build
stage does), install it into a fresh virtual environment with ``pip install --no-deps``, and check that
every console script exists there. The wheel's dependencies are not reinstalled (that would need the
package index); they are taken from the project's development environment through ``PYTHONPATH``, while
the test checks that the project's own modules are imported from the fresh install, not from the source
tree. Finally the node shim starts ``kici-standalone`` from that install against an embedded PostgreSQL,
and ``/health`` and the image's own HEALTHCHECK command are probed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SHIM = ROOT / "deploy" / "docker" / "node"
BOOT_TIMEOUT = 240.0  # first start of an embedded PostgreSQL runs initdb


# --- Dockerfile structure -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    keyword: str
    value: str


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, value = line.partition(" ")
        result.append(Instruction(keyword=keyword.upper(), value=value.strip()))
    return result


def stages(instrs: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instrs:
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def exec_form(value: str) -> list[str]:
    """A JSON exec-form argument list (``["a", "b"]``), else the shell words."""
    if value.startswith("["):
        parsed = json.loads(value)
        assert isinstance(parsed, list)
        return [str(x) for x in parsed]
    return shlex.split(value)


INSTRUCTIONS = instructions(DOCKERFILE)
STAGES = stages(INSTRUCTIONS)
RUNTIME = STAGES[-1]


def runtime(keyword: str) -> list[str]:
    return [i.value for i in RUNTIME if i.keyword == keyword]


def test_multi_stage_and_runtime_stage_is_last() -> None:
    assert len(STAGES) >= 2
    build_stage = STAGES[0]
    assert any("pip wheel" in i.value and "--no-deps" in i.value for i in build_stage if i.keyword == "RUN")
    froms = [i.value for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert froms[-1].lower().endswith("as runtime")
    # The runtime copies the built environment from the build stage instead of building itself.
    build_name = froms[0].split()[-1]
    assert any(v.startswith(f"--from={build_name} ") for v in runtime("COPY"))


def test_runtime_runs_as_non_root_user() -> None:
    users = runtime("USER")
    assert users, "the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_nftables_installed_in_runtime() -> None:
    assert any(re.search(r"(apt-get install|apk add)[^&;]*\bnftables\b", v) for v in runtime("RUN"))


def test_expose_healthcheck_and_default_command() -> None:
    assert "4000" in " ".join(runtime("EXPOSE")).split()
    health = runtime("HEALTHCHECK")
    assert len(health) == 1 and "/health" in health[0]
    assert exec_form(runtime("CMD")[-1]) == ["kici-server"]


def test_node_shim_copied_and_executable() -> None:
    copies = [v.split() for v in runtime("COPY")]
    assert ["deploy/docker/node", "/usr/local/bin/node"] in copies
    assert os.access(SHIM, os.X_OK), "the shim must be executable (COPY keeps the mode)"


def test_packages_orchestrator_dockerfile_matches() -> None:
    """The guide builds with ``-f packages/orchestrator/Dockerfile``: same instructions as ./Dockerfile."""
    assert instructions(ROOT / "packages" / "orchestrator" / "Dockerfile") == INSTRUCTIONS


def test_build_stage_copies_every_package() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        include = tomllib.load(fh)["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {v.split()[0] for v in (i.value for i in STAGES[0] if i.keyword == "COPY")}
    for pattern in include:
        assert pattern.rstrip("*") in copied, f"the build stage does not copy {pattern}"


def test_build_stage_installs_dependencies_from_the_lock() -> None:
    """The image gets exactly the locked versions and hashes, and builds the wheel with the locked backend."""
    runs = [i.value for i in STAGES[0] if i.keyword == "RUN"]
    copies = [i.value for i in STAGES[0] if i.keyword == "COPY"]
    assert any(c.split()[0] == "requirements/runtime.lock" for c in copies), copies
    assert any("--require-hashes" in r and "-r requirements/runtime.lock" in r for r in runs), runs
    for run in runs:
        for command in run.split("&&"):
            words = command.split()
            if "pip" in " ".join(words[:1]) and "install" in words:
                assert "--no-deps" in words, f"an install that resolves dependencies itself: {command.strip()}"
            if "wheel" in words and any(w.endswith("/pip") for w in words):
                assert "--no-build-isolation" in words, f"a build that fetches its own backend: {command.strip()}"


# --- the build context (.dockerignore) ------------------------------------------------------------


def _docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker compiles it: ``*`` and ``?`` stay within a path segment, ``**`` spans
    any number of segments (``**/`` also none), ``[...]`` classes and ``\\`` escapes as in Go's path.Match."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern[i : i + 1] == "/":
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i + 1)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """``(exclusion, pattern)`` per line of a .dockerignore (``!`` lines re-include); comments skipped."""
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        cleaned = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _docker_pattern(cleaned)))
    return rules


def ignored(rules: list[tuple[bool, re.Pattern[str]]], rel: str) -> bool:
    """Whether Docker leaves ``rel`` out of the context: the last rule matching the path or one of its parent
    directories decides."""
    parents = ["/".join(rel.split("/")[: n + 1]) for n in range(rel.count("/"))]
    result = False
    for negate, pattern in rules:
        if result == (not negate):
            continue  # this rule cannot change the outcome
        if pattern.match(rel) or any(pattern.match(p) for p in parents):
            result = not negate
    return result


def build_context(root: Path) -> dict[str, int]:
    """Every file Docker would send for ``docker build <root>``: relative path -> size."""
    rules = dockerignore(root / ".dockerignore")
    found: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            rel = name if base == "." else f"{base}/{name}"
            if not ignored(rules, rel):
                found[rel] = (Path(dirpath) / name).lstat().st_size
    return found


def test_dockerignore_pattern_semantics() -> None:
    rules = [
        (False, _docker_pattern("**/__pycache__")),
        (False, _docker_pattern(".venv")),
        (False, _docker_pattern("**/.env.*")),
        (True, _docker_pattern("**/.env.example")),
    ]
    assert ignored(rules, "kici_core/__pycache__/x.pyc") and ignored(rules, "__pycache__/y.pyc")
    assert ignored(rules, ".venv/bin/python") and not ignored(rules, "tests/.venv/bin/python")
    assert ignored(rules, "deploy/compose/.env.local") and not ignored(rules, "deploy/compose/.env.example")
    assert not ignored(rules, "kici_core/pycache.py")


def test_build_context_keeps_what_the_image_copies_and_leaves_out_dev_state(tmp_path: Path) -> None:
    """After ``make install``, ``make dev`` and ``make test`` a checkout holds a virtual environment, the dev
    secrets in .kici-dev/state.json, git data, caches and test artefacts: none of it reaches the build context,
    while every path the Dockerfile copies does."""
    copied = [
        src
        for ins in INSTRUCTIONS
        if ins.keyword == "COPY" and not ins.value.startswith("--from=")
        for src in exec_form(ins.value)[:-1]
    ]
    assert copied, "the Dockerfile copies nothing from the context"
    junk = [
        ".venv/bin/python",
        ".venv/lib/python3.12/site-packages/psycopg/__init__.py",
        ".kici-dev/state.json",
        ".kici-dev/data/postgres/PG_VERSION",
        ".kici-dev/logs/orchestrator.log",
        ".git/HEAD",
        ".git/objects/ab/cdef",
        "kici_core/__pycache__/ports.cpython-312.pyc",
        "tests/unit/__pycache__/t.pyc",
        ".mypy_cache/3.12/x.json",
        ".ruff_cache/0.9/x",
        ".pytest_cache/v/cache/lastfailed",
        ".hypothesis/examples/ab/cd",
        "kici.egg-info/PKG-INFO",
        "build/lib/kici_core/ports.py",
        "dist/kici-0.1.0-py3-none-any.whl",
        "deploy/compose/.env",
        ".env",
        "my-app.2026-03-01.private-key.pem",
        ".coverage",
        "htmlcov/index.html",
        "junit.xml",
    ]
    keep = [
        "pyproject.toml",
        "README.md",
        "kici_core/ports.py",
        "kici_adapters/postgres/queries.sql",
        "kici_runtime/migrations_placeholder.txt",
        "deploy/docker/node",
        "deploy/compose/.env.example",
        "Dockerfile",
    ]
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    for rel in junk + keep:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    context = build_context(tmp_path)
    assert sorted(set(junk) & set(context)) == []
    assert sorted(set(keep) - set(context)) == []

    # The real checkout (which has .venv, .git and caches when the tests run): what the Dockerfile copies is
    # there, nothing from the excluded places is, and the context stays small.
    real = build_context(ROOT)
    for src in copied:
        assert src in real or any(p.startswith(src.rstrip("/") + "/") for p in real), f"{src} is not in the context"
    banned = (".venv/", ".kici-dev/", ".git/", ".mypy_cache/", ".ruff_cache/", ".pytest_cache/", ".hypothesis/")
    assert [p for p in real if p.startswith(banned) or "/__pycache__/" in p or p == ".git"] == []
    assert sum(real.values()) < 20 * 1024 * 1024, f"build context is {sum(real.values())} bytes"


# --- the install steps, outside Docker --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Install:
    venv: Path
    bin: Path
    env: dict[str, str]  # PATH and PYTHONPATH for running the installed scripts; KICI_* stripped
    wheel: Path


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    work = tmp_path_factory.mktemp("image")
    wheels = work / "wheels"
    # Build from a copy of the sources, as the image's build stage does: setuptools keeps a build/ directory
    # in the tree it builds, and a stale one (a renamed migration, say) would otherwise end up in the wheel.
    src = work / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".kici-dev", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests", "docs"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        check=True,
        cwd=work,
        timeout=300,
    )
    (wheel,) = wheels.glob("kici-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        cwd=work,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]  # the dependencies, from the development env
    env.pop("PYTHONHOME", None)
    return Install(venv=venv, bin=venv / "bin", env=env, wheel=wheel)


def test_wheel_ships_every_data_file(install: Install) -> None:
    """SQL files (migrations, named queries) and the dashboard's templates, stylesheet and script are read at
    run time: the wheel, hence the image, needs them."""
    names = set(zipfile.ZipFile(install.wheel).namelist())
    data = sorted(
        str(p.relative_to(ROOT))
        for pkg in ("kici_core", "kici_adapters", "kici_runtime")
        for p in (ROOT / pkg).rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    )
    assert any("/migrations/" in d for d in data)
    assert (
        "kici_runtime/orchestrator/dashboard/templates/run.html" in data
        and "kici_runtime/orchestrator/dashboard/static/dashboard.js" in data
    )
    missing = [d for d in data if d not in names]
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"


def test_console_scripts_installed(install: Install) -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    assert {"kici-server", "kici-standalone", "kici-admin", "kici-agent", "kici-relay"} <= set(scripts)
    for name in scripts:
        assert os.access(install.bin / name, os.X_OK), f"{name} missing from the installed environment"


def test_installed_modules_come_from_the_wheel(install: Install, tmp_path: Path) -> None:
    code = "import kici_core, kici_adapters, kici_runtime.orchestrator.standalone as s; print(kici_core.__file__)"
    out = subprocess.run(
        [str(install.bin / "python"), "-c", code],
        env=install.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert Path(out.stdout.strip()).is_relative_to(install.venv)


def test_node_shim_reaches_kici_standalone(install: Install, tmp_path: Path) -> None:
    out = subprocess.run(
        ["sh", str(SHIM), "packages/orchestrator/dist/standalone.js", "--help"],
        env=install.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "independent mode" in out.stdout and "--migrate-only" in out.stdout


def test_node_shim_refuses_other_scripts(install: Install, tmp_path: Path) -> None:
    out = subprocess.run(
        ["sh", str(SHIM), "dist/other.js"], env=install.env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 64
    assert "only packages/orchestrator/dist/server.js" in out.stderr


# --- booting the installed orchestrator -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lines_of(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str | None], threading.Thread]:
    """Every output line of ``proc`` on a queue (``None`` when the output ends), and the reading thread."""
    q: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)
        q.put(None)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return q, thread


def wait_for_line(q: queue.Queue[str | None], pattern: str, deadline: float, seen: list[str]) -> bool:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            line = q.get(timeout=remaining)
        except queue.Empty:
            return False
        if line is None:
            return False
        seen.append(line)
        if pattern in line:
            return True


@pytest.fixture
def standalone(install: Install, tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    port = free_port()
    # In the system temp dir, not pytest's: an embedded server started by root runs as its own account,
    # which must be able to reach the data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="kici-image-"))
    data_dir.chmod(0o711)  # the server's account only needs to pass through to <data>/postgres
    env = dict(install.env)
    env.update(
        {
            "KICI_MODE": "independent",
            "KICI_DATABASE_URL": "embedded",
            "KICI_DEV": "true",
            "KICI_DATA_DIR": str(data_dir),
            "KICI_PORT": str(port),
            "KICI_HOST": "127.0.0.1",
            "KICI_SECRET_KEY": secrets.token_hex(32),
        }
    )
    proc = subprocess.Popen(
        ["sh", str(SHIM), "packages/orchestrator/dist/standalone.js"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    q, reader = lines_of(proc)
    seen: list[str] = []
    try:
        started = wait_for_line(q, "started on port", time.monotonic() + BOOT_TIMEOUT, seen)
        assert started, "kici-standalone did not start:\n" + "".join(seen[-40:])
        yield port, env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        reader.join(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert proc.returncode == 0, "kici-standalone did not stop cleanly on SIGTERM:\n" + "".join(seen[-40:])


def test_standalone_boots_from_the_install_and_answers_health(
    install: Install, standalone: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, env = standalone
    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and isinstance(body["uptime"], (int, float))
    assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).json()["checks"]["database"] is True

    # The image's HEALTHCHECK command, run as written, succeeds against this server.
    health = exec_form(runtime("HEALTHCHECK")[0].split("CMD", 1)[1].strip())
    out = subprocess.run(health, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
