"""Raw configuration sources: the environment, the YAML file, and typed reads through the table.

Used by :mod:`kici_runtime.config.settings`; nothing here reads ``os.environ`` itself (the caller passes the
mapping in).
"""

from __future__ import annotations

import difflib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import yaml

from kici_core.errors import ConfigError
from kici_runtime.config import vars as config_vars
from kici_runtime.config.vars import Var

#: Read when neither ``--config`` nor ``KICI_CONFIG`` names a file; silently skipped when absent.
DEFAULT_CONFIG_PATH = "/etc/kici/orchestrator.yaml"


class SettingsError(ConfigError):
    """Configuration is invalid; boot is refused. ``issues`` holds one line per problem."""

    def __init__(self, message: str, issues: tuple[str, ...] = ()) -> None:
        self.issues = issues or (message,)
        super().__init__(message)


def fail(issues: list[str] | tuple[str, ...], header: str = "Configuration validation failed:") -> NoReturn:
    """Raise :class:`SettingsError`: one issue is its own one-line message, several get ``header``."""
    issues = tuple(issues)
    if len(issues) == 1:
        raise SettingsError(issues[0], issues)
    raise SettingsError("\n".join([header, *(f"  - {i}" for i in issues)]), issues)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Secret:
    """A secret string. ``str()``/``repr()`` never show it; call :meth:`reveal` where it is used."""

    value: str

    def reveal(self) -> str:
        """The plaintext; pass it to the code that needs it, never to a log or error message."""
        return self.value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved:
    """Where one variable's value came from: ``source`` is ``env``, ``yaml`` or ``default``."""

    name: str
    raw: str | None
    source: str
    label: str


# --- YAML --------------------------------------------------------------------------------------


def read_yaml(path: str, *, explicit: bool) -> dict[str, object]:
    """Load the YAML file at ``path`` and flatten it to ``{"dotted.key": value}``.

    An implicit (default-location) file that is missing, unreadable or empty counts as absent.

    Raises:
        SettingsError: the explicit file cannot be read, is not a mapping, or has an unknown key or a
            non-scalar value under a known key.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        if not explicit:
            return {}
        fail([f"Failed to read config file at {path}: {exc.strerror or exc}"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if not explicit:
            return {}
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fail([f"Failed to parse config file at {path}: {first}"])
    if not isinstance(data, dict) or not data:
        if not explicit:
            return {}
        fail([f"Config file at {path} is empty or not a valid YAML object"])
    flat: dict[str, object] = {}
    issues: list[str] = []
    _flatten(data, "", flat, issues)
    if len(issues) == 1:
        fail([f"Config validation failed for {path}: {issues[0]}"])
    if issues:
        fail(issues, header=f"Config validation failed for {path}:")
    return flat


def _flatten(node: Mapping[object, object], prefix: str, out: dict[str, object], issues: list[str]) -> None:
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in config_vars.IGNORED_YAML_KEYS or dotted.split(".")[0] in config_vars.IGNORED_YAML_SECTIONS:
            continue
        if dotted in config_vars.YAML_TO_VAR:
            if isinstance(value, dict | list):
                issues.append(
                    f"{dotted}: expected a single value, got a {'mapping' if isinstance(value, dict) else 'list'}"
                )
            elif value is not None:
                out[dotted] = value
            continue
        if isinstance(value, dict) and any(k.startswith(dotted + ".") for k in config_vars.YAML_TO_VAR):
            _flatten(value, dotted + ".", out, issues)
            continue
        issues.append(f"{dotted}: unknown key{_yaml_hint(dotted)}")


def _yaml_hint(dotted: str) -> str:
    close = difflib.get_close_matches(dotted, list(config_vars.YAML_TO_VAR), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def yaml_text(value: object) -> str:
    """A YAML scalar as the text an env var would carry (``True`` -> ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- typed reads -------------------------------------------------------------------------------


class Reader:
    """Typed reads of table variables: env (primary, then aliases) > YAML > default.

    Problems are collected in ``issues`` (one line each, naming the variable or YAML key, never a
    secret's value) so that all of them can be reported together.
    """

    def __init__(self, environ: Mapping[str, str], yaml_values: Mapping[str, object], yaml_path: str | None) -> None:
        self.environ = environ
        self.yaml_values = yaml_values
        self.yaml_path = yaml_path
        self.issues: list[str] = []
        self.resolved: dict[str, Resolved] = {}

    def lookup(self, name: str) -> Resolved:
        """Find the raw text of ``name`` without parsing it."""
        var = config_vars.BY_NAME[name]
        for candidate in (var, *config_vars.aliases_of(name)):
            raw = self.environ.get(candidate.name)
            if raw is None or (raw == "" and not _empty_is_value(var)):
                continue
            return Resolved(name=name, raw=raw, source="env", label=candidate.name)
        if var.yaml is not None and var.yaml in self.yaml_values:
            return Resolved(
                name=name,
                raw=yaml_text(self.yaml_values[var.yaml]),
                source="yaml",
                label=f"{var.yaml} (in {self.yaml_path})",
            )
        return Resolved(name=name, raw=var.default, source="default", label=name)

    def text(self, name: str) -> str | None:
        """The resolved text of a string/path/url variable (``None`` when unset or empty)."""
        got = self._take(name)
        if got.raw == "" and config_vars.BY_NAME[name].default != "":
            return None
        return got.raw

    def secret(self, name: str) -> Secret | None:
        """A secret variable, wrapped so it cannot be printed by accident."""
        value = self.text(name)
        return Secret(value=value) if value else None

    def integer(self, name: str) -> int | None:
        """An integer variable checked against the table's bounds."""
        got = self._take(name)
        if got.raw is None:
            return None
        var = config_vars.BY_NAME[name]
        try:
            value = int(got.raw.strip(), 10)
        except ValueError:
            self.issues.append(f"{got.label} must be an integer{_shown(var, got.raw)}")
            return _fallback_int(var)
        if var.minimum is not None and value < var.minimum:
            self.issues.append(f"{got.label} must be at least {var.minimum}, got {value}")
            return _fallback_int(var)
        if var.maximum is not None and value > var.maximum:
            self.issues.append(f"{got.label} must be at most {var.maximum}, got {value}")
            return _fallback_int(var)
        return value

    def number(self, name: str) -> float | None:
        """A decimal number variable checked against the table's minimum."""
        got = self._take(name)
        if got.raw is None:
            return None
        var = config_vars.BY_NAME[name]
        try:
            value = float(got.raw.strip())
        except ValueError:
            self.issues.append(f"{got.label} must be a number{_shown(var, got.raw)}")
            return None
        if value != value or value in (float("inf"), float("-inf")):
            self.issues.append(f"{got.label} must be a finite number")
            return None
        if var.minimum is not None and value < var.minimum:
            self.issues.append(f"{got.label} must be at least {var.minimum}, got {got.raw}")
            return None
        return value

    def choice(self, name: str) -> str | None:
        """An enum variable; the value must be one of the table's choices exactly."""
        got = self._take(name)
        if got.raw is None:
            return None
        var = config_vars.BY_NAME[name]
        if got.raw not in var.choices:
            self.issues.append(f"{got.label} must be one of {', '.join(var.choices)}{_shown(var, got.raw)}")
            return var.default if var.default in var.choices else None
        return got.raw

    def flag(self, name: str) -> bool | None:
        """A ``true``/``false`` variable (only those literals)."""
        value = self.choice(name)
        return None if value is None else value == "true"

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        """The value when it is a URL with one of ``schemes`` and a host; otherwise an issue naming the variable
        (quoting the value unless the variable is a secret) and None."""
        value = self.text(name)
        if value is None:
            return None
        parsed = urllib.parse.urlsplit(value)
        if parsed.scheme not in schemes or not parsed.netloc:
            label = self.resolved[name].label
            wanted = " or ".join(f"{s}://" for s in schemes)
            shown = "" if config_vars.BY_NAME[name].secret else f", got {value[:60]!r}"
            self.issues.append(f"{label} must be a {wanted} URL{shown}")
            return None
        return value

    def _take(self, name: str) -> Resolved:
        got = self.lookup(name)
        self.resolved[name] = got
        return got


def _empty_is_value(var: Var) -> bool:
    # An empty KICI_MODE or KICI_PORT is a mistake worth refusing; an empty optional string
    # (typical of compose files with `${UNSET}`) just means "not set".
    return var.kind in ("enum", "int", "float") and var.default not in (None, "")


def _fallback_int(var: Var) -> int | None:
    return int(var.default) if var.default not in (None, "") else None


def _shown(var: Var, raw: str) -> str:
    if var.secret:
        return ""
    return f", got {raw[:60]!r}"


# --- unknown-variable guard --------------------------------------------------------------------


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``KICI_*`` names in ``environ`` that the table does not know, sorted."""
    return sorted(n for n in environ if n.startswith("KICI_") and not config_vars.is_known(n))


def unknown_variables_message(names: list[str]) -> str:
    """The refusal text for unknown ``KICI_*`` variables, each with a "did you mean" hint."""
    known = [v.name for v in config_vars.VARIABLES if v.name.startswith("KICI_")]
    known += list(config_vars.ACCEPTED_NAMES)
    lines = [
        "Unknown KICI_* env var(s) detected — refusing to start.",
        "Set KICI_DEV=true to downgrade this check to a warning.",
        "Unknown vars:",
    ]
    for name in names:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"(did you mean {close[0]}?)" if close else "(no close match in the schema)"
        lines.append(f"  - {name}    {hint}")
    return "\n".join(lines)
