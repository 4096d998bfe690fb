"""Static matrix expansion for lock-file jobs (lock-file spec §2.8).

The array form ``["a", "b"]`` yields combinations ``{"value": v}``; the object form yields the cartesian
product with dimension names sorted. ``exclude`` then drops every combination agreeing with an entry on all
of the entry's keys; ``include`` adds entries not already present. Zero combinations, or more than
:data:`MAX_MATRIX_CHILDREN`, is an error for that job only: :func:`expand_matrix` returns the reason instead
of raising, and the job is failed when its run is planned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from kici_core.lockfile_values import (
    MISSING,
    as_array,
    as_object,
    as_str,
    as_str_list,
    field,
    join,
    one_of,
)

MAX_MATRIX_CHILDREN: Final = 256
"""Upper bound on the children of one matrix job (upstream ``MAX_FANOUT_JOBS``)."""

MAX_MATRIX_PRODUCT: Final = 65536
"""Cartesian products larger than this are refused before ``exclude`` is applied (our own guard)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixChild:
    """One expanded combination of a matrix job."""

    name: str
    """The child's job name: ``"<job> (<suffix>)"``."""
    values: Mapping[str, str]
    """The combination, in combination key order (sent to the agent as ``matrixValues``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticMatrix:
    """A job's static matrix as written in the lock file (before expansion)."""

    dimensions: Mapping[str, tuple[str, ...]]
    """Dimension name -> values. The array form is the single dimension ``"value"``."""
    array_form: bool
    include: tuple[Mapping[str, str], ...]
    exclude: tuple[Mapping[str, str], ...]


def _combos(value: object, path: str) -> tuple[Mapping[str, str], ...]:
    entries = []
    for i, entry in enumerate(as_array(value, path)):
        entry_path = join(path, i)
        obj = as_object(entry, entry_path)
        entries.append(MappingProxyType({k: as_str(v, join(entry_path, k)) for k, v in obj.items()}))
    return tuple(entries)


def parse_static_matrix(
    matrix: Mapping[str, object], job: Mapping[str, object], path: str, job_path: str
) -> StaticMatrix:
    """Read ``matrix.values`` plus the job's ``include``/``exclude`` lists.

    Args:
        matrix: the job's ``matrix`` object (``_type`` already known to be ``"static"``).
        job: the job object, for its ``include``/``exclude`` fields.
        path: JSON path of ``matrix``; ``job_path`` is the job's.
    """
    values_path = join(path, "values")
    values = field(matrix, "values", path, required=True)
    if isinstance(values, list | tuple):
        dims: dict[str, tuple[str, ...]] = {"value": as_str_list(values, values_path)}
        array_form = True
    else:
        obj = as_object(values, values_path)
        dims = {name: as_str_list(obj[name], join(values_path, name)) for name in obj}
        array_form = False
    include = field(job, "include", job_path)
    exclude = field(job, "exclude", job_path)
    return StaticMatrix(
        dimensions=MappingProxyType(dims),
        array_form=array_form,
        include=() if include is MISSING else _combos(include, join(job_path, "include")),
        exclude=() if exclude is MISSING else _combos(exclude, join(job_path, "exclude")),
    )


def check_matrix_type(matrix: Mapping[str, object], path: str) -> str:
    """Return the matrix ``_type`` (``"static"`` or ``"dynamic"``), raising on anything else."""
    return one_of(field(matrix, "_type", path, required=True), join(path, "_type"), ("static", "dynamic"))


def child_name(base: str, values: Mapping[str, str]) -> str:
    """Name a matrix child: the lone ``value`` itself, else the values joined by ``", "`` in key order."""
    if list(values) == ["value"]:
        suffix = values["value"]
    else:
        suffix = ", ".join(values.values())
    return f"{base} ({suffix})"


def _same(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return len(a) == len(b) and all(b.get(k) == v for k, v in a.items())


def _excluded(combo: Mapping[str, str], excludes: Sequence[Mapping[str, str]]) -> bool:
    # An empty exclude entry excludes nothing.
    return any(entry and all(combo.get(k) == v for k, v in entry.items()) for entry in excludes)


def expand_matrix(base: str, matrix: StaticMatrix) -> tuple[tuple[MatrixChild, ...], str | None]:
    """Expand ``matrix`` for the job named ``base``.

    Returns:
        ``(children, None)`` on success, or ``((), reason)`` when the job has zero or too many children.
    """
    names = sorted(matrix.dimensions)
    size = math.prod(len(matrix.dimensions[n]) for n in names)
    if size > MAX_MATRIX_PRODUCT:
        return (
            (),
            f"matrix has {size} combinations before exclude (at most {MAX_MATRIX_PRODUCT} are considered)",
        )
    combos: list[Mapping[str, str]] = []
    for picked in itertools.product(*(matrix.dimensions[n] for n in names)):
        combo = dict(zip(names, picked, strict=True))
        if not _excluded(combo, matrix.exclude):
            combos.append(combo)
    for entry in matrix.include:
        if entry and not any(_same(entry, c) for c in combos):
            combos.append(dict(entry))
    if not combos:
        return (), "matrix expands to zero combinations"
    if len(combos) > MAX_MATRIX_CHILDREN:
        return (), f"matrix expands to {len(combos)} combinations (limit {MAX_MATRIX_CHILDREN})"
    children = tuple(
        MatrixChild(name=child_name(base, combo), values=MappingProxyType(dict(combo))) for combo in combos
    )
    return children, None


def reject_non_matrix_adjustments(job: Mapping[str, object], job_path: str) -> None:
    """``include``/``exclude`` without a matrix: validate their shape so typos still surface."""
    for key in ("include", "exclude"):
        value = field(job, key, job_path)
        if value is not MISSING:
            _combos(value, join(job_path, key))


__all__ = [
    "MAX_MATRIX_CHILDREN",
    "MatrixChild",
    "StaticMatrix",
    "check_matrix_type",
    "child_name",
    "expand_matrix",
    "parse_static_matrix",
]
