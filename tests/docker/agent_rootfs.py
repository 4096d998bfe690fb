"""Assemble a root filesystem for a ``kici-agent`` image from this machine, for ``docker import``.

No image registry is needed: the tarball holds this interpreter (binary, ``libpython``, the standard library),
the project's packages and the few libraries ``kici-agent`` imports, ``bash``, ``git`` (with its helpers) and
some coreutils, plus every shared library they link (found with ``ldd``). Import it with::

    python tests/docker/agent_rootfs.py /tmp/rootfs.tar
    docker import --change 'ENV PYTHONPATH=/app:/app/site' --change 'CMD ["python3", "-m", "kici_runtime.agent"]' \\
        /tmp/rootfs.tar kici-agent:local
"""

from __future__ import annotations

import importlib
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE_MODULES = ("anyio", "click", "typing_extensions", "websockets", "sniffio", "idna")
TOOLS = ("bash", "git", "env", "cat", "ls", "mkdir", "rm", "sleep", "true", "uname", "id", "hostname", "sh")
SKIP_STDLIB = {
    "site-packages",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "config-3.11-x86_64-linux-gnu",
}
ENV = "PYTHONPATH=/app:/app/site"
CMD = '["python3", "-m", "kici_runtime.agent"]'


def _ldd(path: Path) -> set[Path]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    return {Path(m) for m in re.findall(r"(/\S+\.so[.\d]*)", out)}


def _which(name: str) -> Path:
    for folder in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    raise FileNotFoundError(name)


def build(target: Path) -> None:
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": str(prefix), "base": str(prefix)})["stdlib"])
    binary = prefix / "bin" / version
    libpython = prefix / "lib" / f"lib{version}.so.1.0"
    entries: list[tuple[Path, str]] = [(binary, f"usr/local/bin/{version}")]
    if libpython.exists():  # also on the loader's default path: the binary's rpath names this machine's prefix
        entries.append((libpython, f"usr/local/lib/{libpython.name}"))
        entries.append((libpython, f"usr/lib/x86_64-linux-gnu/{libpython.name}"))
    elfs = [binary, *([libpython] if libpython.exists() else [])]
    for path in stdlib.rglob("*"):
        rel = path.relative_to(stdlib)
        if (rel.parts and rel.parts[0] in SKIP_STDLIB) or path.is_dir() or "__pycache__" in rel.parts:
            continue
        entries.append((path, f"usr/local/lib/{version}/{rel}"))
        if path.suffix == ".so":
            elfs.append(path)
    for package in ("kici_core", "kici_adapters", "kici_runtime"):
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                entries.append((path, f"app/{path.relative_to(ROOT)}"))
    for name in SITE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        file = Path(module.__file__ or "")
        base = file.parent if file.name == "__init__.py" else file
        for path in [base] if base.is_file() else base.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                entries.append((path, f"app/site/{path.relative_to(base.parent)}"))
                if path.suffix == ".so":
                    elfs.append(path)
    for tool in TOOLS:
        path = _which(tool)
        entries.append((path.resolve(), str(path).lstrip("/")))
        elfs.append(path.resolve())
    for helper in ("git-upload-pack", "git-receive-pack", "git-upload-archive"):  # run by name for file:// clones
        entries.append((_which("git").resolve(), f"usr/bin/{helper}"))
    for path in Path("/usr/lib/git-core").rglob("*"):
        if path.is_file():
            entries.append((path, str(path).lstrip("/")))
    for path in Path("/usr/share/git-core").rglob("*"):
        if path.is_file():
            entries.append((path, str(path).lstrip("/")))
    elfs.append(Path("/usr/lib/git-core/git-remote-http"))
    libs: set[Path] = set()
    for elf in elfs:
        libs |= _ldd(elf)
    for lib in sorted(libs):
        entries.append((lib.resolve(), str(lib).lstrip("/")))
        entries.append((lib.resolve(), str(lib.resolve()).lstrip("/")))
    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        "etc/hostname": b"kici-agent\n",
    }
    with tarfile.open(target, "w") as tar:
        seen: set[str] = set()
        for folder, mode in (
            ("tmp", 0o1777),
            ("root", 0o700),
            ("app", 0o755),
            ("usr/local/bin", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("dev", 0o755),
            ("etc", 0o755),
            ("lib64", 0o755),
        ):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
            seen.add(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for source, name in entries:
            if name in seen or not source.exists():
                continue
            seen.add(name)
            tar.add(str(source), arcname=name, recursive=False)
        for link, to in (("usr/local/bin/python3", version), ("usr/local/bin/python", version), ("bin", "usr/bin")):
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, to
            tar.addfile(info)


if __name__ == "__main__":
    build(Path(sys.argv[1]))
    print(os.path.getsize(sys.argv[1]))
