"""The documentation stays honest: commands, metrics and links in the docs match the code.

* every shell command in a fenced ``sh``/``bash`` block of README.md and docs/*.md that runs one of our
  console scripts names a real entry point, real subcommands and real options (resolved against the click
  command objects), and a ``node …`` command names a script the image's shim understands;
* every metric named in docs/metrics.md (and the operator guide, and the Grafana dashboard) exists in
  ``kici_adapters.metrics.REGISTRY``, and every registry metric is documented and on the dashboard;
* every document linked from README.md and docs/README.md exists, and docs/README.md indexes every page;
* the compose files build the images they run, start the agent only once its token exists, and take every
  variable from .env.example, and their README walks through both steps.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml

from kici_adapters import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
COMPOSE = ROOT / "deploy" / "compose"
DOC_FILES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), COMPOSE / "README.md"]
SHIM = ROOT / "deploy" / "docker" / "node"
DASHBOARD = ROOT / "deploy" / "grafana" / "kici-orchestrator.json"

# Console scripts whose pyproject target is a plain function wrapping a click object in another module.
# (A target that is a function next to a ``cli`` group in the same module needs no entry here.)
CLICK_OVERRIDES = {"kici-relay": "kici_runtime.relay.cli:cli"}
SHIM_SCRIPTS = ("packages/orchestrator/dist/server.js", "packages/orchestrator/dist/standalone.js")
SEPARATORS = {"|", "||", "&&", ";", "&"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE_OPEN = re.compile(r"^\s*```(sh|bash|shell)\s*$")
METRIC_NAME = re.compile(r"\bkici_[a-z0-9_]*[a-z0-9](?![a-z0-9_]|/|\.py)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def entry_points() -> dict[str, str]:
    """``[project.scripts]`` from pyproject.toml: console script name -> ``module:attr``."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        scripts: dict[str, str] = tomllib.load(fh)["project"]["scripts"]
    return scripts


ENTRY_POINTS = entry_points()


def click_command(script: str) -> click.Command:
    """The click object behind a console script (importing it must work)."""
    target = CLICK_OVERRIDES.get(script, ENTRY_POINTS[script])
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pytest.fail(f"{script}: cannot import {module_name} ({exc})")
    obj = getattr(module, attr, None)
    if not isinstance(obj, click.Command):
        obj = getattr(module, "cli", None)
    if not isinstance(obj, click.Command):
        pytest.fail(f"{script}: {target} is not a click command")
    return obj


# --- extracting commands from the docs -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    """One call of one of our programs found in a doc."""

    where: str  # "docs/x.md:12"
    program: str  # a console script, or "node"
    args: tuple[str, ...]


def shell_blocks(path: Path) -> list[tuple[int, str]]:
    """Logical shell lines (continuations joined) of the fenced sh/bash blocks, with their line numbers."""
    lines: list[tuple[int, str]] = []
    inside = False
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not inside:
            inside = bool(FENCE_OPEN.match(raw))
            continue
        if raw.strip().startswith("```"):
            inside, pending = False, None
            continue
        text = raw.strip()
        if text.startswith("$ "):
            text = text[2:]
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text)
        else:
            pending = (number, text)
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1])
            continue
        if pending[1].strip():
            lines.append(pending)
        pending = None
    return lines


def simple_commands(line: str) -> list[list[str]]:
    """Split a shell line into simple commands (``|``, ``&&``, ``;`` …), comments dropped."""
    tokens = shlex.split(line, comments=True)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token in SEPARATORS:
            commands.append([])
        elif token.endswith(";") and len(token) > 1:
            commands[-1].append(token[:-1])
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def find_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """Our program and its arguments in one simple command, if it runs one (directly or in a container)."""
    programs = {*ENTRY_POINTS, "node"}
    i = 0
    while i < len(words) and ASSIGNMENT.match(words[i]):
        i += 1
    if i < len(words) and words[i] in ("sudo", "exec", "env"):
        i += 1
        while i < len(words) and ASSIGNMENT.match(words[i]):
            i += 1
    if i >= len(words):
        return None
    if words[i] in programs:
        return words[i], words[i + 1 :]
    if words[i] in ("docker", "podman") and i + 1 < len(words) and words[i + 1] in ("run", "exec"):
        # The program follows the image / container name: a word not preceded by an option.
        for j in range(i + 3, len(words)):
            if words[j] in programs and not words[j - 1].startswith("-"):
                return words[j], words[j + 1 :]
    return None


def invocations() -> list[Invocation]:
    found: list[Invocation] = []
    for path in DOC_FILES:
        for number, line in shell_blocks(path):
            for words in simple_commands(line):
                hit = find_invocation(words)
                if hit is not None:
                    where = f"{path.relative_to(ROOT)}:{number}"
                    found.append(Invocation(where=where, program=hit[0], args=tuple(hit[1])))
    return found


INVOCATIONS = invocations()


# --- resolving arguments against click -------------------------------------------------------------


def unbracket(args: list[str]) -> list[str]:
    """Usage-synopsis notation to plain words: ``[--org acme]`` -> ``--org acme``; ``...`` dropped."""
    words = [a.removeprefix("[").removesuffix("]") for a in args]
    return [w for w in words if w and w.strip(".") != ""]


def check_args(command: click.Command, args: list[str], where: str, help_names: set[str]) -> list[str]:
    """Problems with ``args`` for ``command``: unknown options or subcommands, wrong argument counts."""
    help_names = help_names | set(command.context_settings.get("help_option_names", ()))
    options: dict[str, click.Option] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                options[name] = param
    problems: list[str] = []
    given: set[str | None] = set()
    positional: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token in help_names:
            return problems
        if token == "--":
            positional.extend(args[i + 1 :])
            break
        if token.startswith("-") and len(token) > 1:
            name, eq, _ = token.partition("=")
            option = options.get(name)
            if option is None:
                problems.append(f"{where}: no option {name!r}")
                i += 1
                continue
            given.add(option.name)
            takes_value = not (option.is_flag or option.count)
            i += 1 + (option.nargs if takes_value and not eq else 0)
            continue
        if isinstance(command, click.Group):
            sub = command.get_command(click.Context(command), token)
            if sub is None:
                known = ", ".join(sorted(command.list_commands(click.Context(command))))
                return [*problems, f"{where}: no subcommand {token!r} (known: {known})"]
            problems += missing_options(command, given, where)
            return problems + check_args(sub, args[i + 1 :], f"{where} {token}", help_names)
        positional.append(token)
        i += 1
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if not any(p.nargs == -1 for p in arguments) and len(positional) > sum(p.nargs for p in arguments):
        problems.append(f"{where}: unexpected argument(s) {positional}")
    needed = sum(p.nargs for p in arguments if p.required and p.nargs > 0)
    if len(positional) < needed:
        problems.append(f"{where}: missing argument(s): needs {needed}, got {positional}")
    return problems + missing_options(command, given, where)


def missing_options(command: click.Command, given: set[str | None], where: str) -> list[str]:
    return [
        f"{where}: required option {p.opts[-1]} missing"
        for p in command.params
        if isinstance(p, click.Option) and p.required and p.envvar is None and p.name not in given
    ]


def test_docs_run_our_programs() -> None:
    programs = {inv.program for inv in INVOCATIONS}
    assert {"kici-admin", "kici-standalone", "kici-agent", "node"} <= programs, programs


@pytest.mark.parametrize("inv", INVOCATIONS, ids=lambda inv: f"{inv.where}:{inv.program}")
def test_documented_command_is_real(inv: Invocation) -> None:
    if inv.program == "node":
        assert inv.args and inv.args[0] in SHIM_SCRIPTS, f"{inv.where}: the node shim only runs {SHIM_SCRIPTS}"
        return
    command = click_command(inv.program)
    problems = check_args(command, unbracket(list(inv.args)), f"{inv.where}: {inv.program}", {"--help"})
    assert not problems, "\n".join(problems)


def test_shim_understands_the_documented_scripts() -> None:
    text = SHIM.read_text(encoding="utf-8")
    for script in SHIM_SCRIPTS:
        assert script in text


def test_checker_rejects_unknown_options_and_subcommands() -> None:
    @click.group()
    @click.option("--url")
    def cli(url: str | None) -> None: ...

    @cli.command()
    @click.argument("name")
    @click.option("--force", is_flag=True)
    def remove(name: str, force: bool) -> None: ...

    assert check_args(cli, ["--url", "x", "remove", "a", "--force"], "t", {"--help"}) == []
    assert check_args(cli, ["--url", "x", "--help"], "t", {"--help"}) == []
    assert "no option '--nope'" in check_args(cli, ["remove", "a", "--nope"], "t", {"--help"})[0]
    assert "no subcommand 'add'" in check_args(cli, ["add"], "t", {"--help"})[0]
    assert "missing argument" in check_args(cli, ["remove"], "t", {"--help"})[0]
    assert "unexpected argument" in check_args(cli, ["remove", "a", "b"], "t", {"--help"})[0]
    assert find_invocation(["docker", "run", "--name", "kici-agent", "kici-agent:latest"]) is None
    assert find_invocation(["docker", "exec", "c1", "kici-admin", "source", "list"]) == (
        "kici-admin",
        ["source", "list"],
    )
    assert unbracket(["[--org", "acme]", "[--json]", "..."]) == ["--org", "acme", "--json"]
    assert simple_commands("A=1 kici-agent --labels x && curl y  # note") == [
        ["A=1", "kici-agent", "--labels", "x"],
        ["curl", "y"],
    ]


# --- metrics --------------------------------------------------------------------------------------


def registry_names() -> tuple[set[str], set[str]]:
    """(canonical metric names as documented, every exposed sample name)."""
    canonical: set[str] = set()
    samples: set[str] = set()
    for family in metrics.REGISTRY.collect():
        canonical.add(family.name + "_total" if family.type == "counter" else family.name)
        if family.type == "histogram":
            samples |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return canonical, canonical | samples


def names_in(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


def test_every_metric_in_metrics_doc_exists() -> None:
    _, exposed = registry_names()
    for doc in ("metrics.md", "operator-guide.md"):
        unknown = names_in((DOCS / doc).read_text(encoding="utf-8")) - exposed
        assert not unknown, f"docs/{doc} names metrics the registry does not have: {sorted(unknown)}"


def test_every_registry_metric_is_documented() -> None:
    canonical, _ = registry_names()
    documented = names_in((DOCS / "metrics.md").read_text(encoding="utf-8"))
    assert canonical - documented == set(), "undocumented metrics"
    assert len(canonical) >= 10  # the nine of the deploy guide (one is a hits/misses pair) and more


def test_grafana_dashboard_uses_only_real_metrics_and_shows_all() -> None:
    canonical, exposed = registry_names()
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "kici-orchestrator"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = set().union(*(names_in(e) for e in exprs))
    assert used - exposed == set()
    for name in canonical:
        assert any(name in u for u in used), f"{name} is not on the dashboard"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --- links ----------------------------------------------------------------------------------------


def local_links(path: Path) -> list[Path]:
    targets = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        targets.append((path.parent / target.split("#", 1)[0]).resolve())
    return targets


@pytest.mark.parametrize("doc", ["README.md", "docs/README.md", "docs/operator-guide.md", "docs/architecture.md"])
def test_linked_docs_exist(doc: str) -> None:
    links = local_links(ROOT / doc)
    assert links
    missing = [str(p.relative_to(ROOT)) for p in links if not p.exists()]
    assert not missing, f"{doc} links to missing files: {missing}"


def test_docs_index_lists_every_page() -> None:
    linked = set(local_links(DOCS / "README.md"))
    pages = {p.resolve() for p in DOCS.glob("*.md") if p.name != "README.md"}
    assert pages - linked == set(), "pages missing from docs/README.md"


# --- deploy/compose -----------------------------------------------------------------------------------------


COMPOSE_FILES = sorted(COMPOSE.glob("docker-compose.*.yml"))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_build_their_images_and_wait_for_the_agent_token(path: Path) -> None:
    services = yaml.safe_load(path.read_text(encoding="utf-8"))["services"]
    stages = re.findall(
        r"^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.IGNORECASE | re.MULTILINE
    )
    for name in ("orchestrator", "agent"):
        build = services[name].get("build")
        assert isinstance(build, dict) and (path.parent / build["context"] / "Dockerfile").is_file(), name
        assert build.get("target") in (None, *stages), f"{name}: no Dockerfile stage {build.get('target')}"
    assert (
        services["orchestrator"]["image"] == "kici-orchestrator:latest"
        and "target" not in services["orchestrator"]["build"]
    )  # the default (last) stage: the orchestrator
    assert services["agent"]["image"] == "kici-agent:latest" and services["agent"]["build"]["target"] == "agent"
    # The agent's token is made by the running orchestrator: the agent starts only on request.
    assert services["agent"].get("profiles") == ["agent"] and "profiles" not in services["orchestrator"]
    assert "KICI_SECRET_KEY" in services["orchestrator"]["environment"]
    example = (COMPOSE / ".env.example").read_text(encoding="utf-8")
    declared = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    used = set(re.findall(r"\$\{([A-Z_]+)", path.read_text(encoding="utf-8")))
    assert used <= declared, f"not in .env.example: {sorted(used - declared)}"


def test_compose_readme_walks_through_the_image_build_and_the_agent_token() -> None:
    text = (COMPOSE / "README.md").read_text(encoding="utf-8")
    steps = [
        "cp .env.example .env",
        "--profile agent build",
        "docker build --target agent -t kici-agent:latest .",
        "up -d",
        "agent-token create",
        "KICI_AGENT_TOKEN=kat_",
        "--profile agent up -d",
    ]
    positions = [text.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions, strict=True) if p == -1]
    assert positions == sorted(positions), "the steps are out of order"
    assert 'python3 -c "import secrets; print(secrets.token_hex(32))"' in text
    for path in COMPOSE_FILES:  # each compose file points at the README
        assert "README.md" in path.read_text(encoding="utf-8").split("services:")[0]


def test_scale_out_compose_runs_two_replicas_behind_caddy_on_one_database() -> None:
    text = (COMPOSE / "docker-compose.scale-out.yml").read_text(encoding="utf-8")
    services = yaml.safe_load(text)["services"]
    orch = services["orchestrator"]
    assert orch["deploy"]["replicas"] == 2 and "ports" not in orch  # only Caddy publishes a port
    assert "@postgres:5432/" in orch["environment"]["KICI_DATABASE_URL"] and "postgres" in orch["depends_on"]
    assert services["caddy"]["ports"] == ["4000:4000"]
    mount = services["caddy"]["volumes"][0].split(":")
    caddyfile = (COMPOSE / mount[0]).read_text(encoding="utf-8")
    assert mount[1] == "/etc/caddy/Caddyfile" and "dynamic a orchestrator 4000" in caddyfile
    assert services["agent"]["environment"]["KICI_ORCHESTRATOR_URL"] == "ws://caddy:4000/ws"
    guide = (DOCS / "operator-guide.md").read_text(encoding="utf-8")
    assert "docker-compose.scale-out.yml" in guide and "kici-admin cluster status" in guide
