"""Request bodies of the admin API as pydantic models, and their validation errors as 400 answers.

:func:`parse` validates a JSON object (from :func:`~kici_runtime.orchestrator.admin.auth.json_body`) against a
model and raises ``400 {"error": "Validation error", "details": [{"path": [...], "message": ...}]}`` naming
every field that is wrong, with the full path into the body (``["labels", 2]`` for the third label). Messages
are ours, never pydantic's, and never echo the value (a body may carry a secret).

Each field's ``description`` is its message for a wrong type or value; a length error is
``must be <min>..<max> characters``; a missing required field ``is required`` (or the model's ``REQUIRED``
text); an unknown field in a model that forbids them ``unknown field``. Validators raise :func:`problem`
for messages of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from annotated_types import MaxLen, MinLen
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from kici_core.ports import AdminRole
from kici_runtime.orchestrator.admin.auth import ALL_ROLES, validation

__all__ = [
    "AdminTokenBody",
    "AgentTokenBody",
    "Body",
    "CancelRunBody",
    "GcBody",
    "RerunBody",
    "WorkflowDispatchBody",
    "details",
    "parse",
    "problem",
]

_NESTED = {"string_type": "must be a string", "int_type": "must be an integer", "bool_type": "must be a boolean",
           "dict_type": "must be an object", "list_type": "must be an array"}
"""Messages for errors below a top-level field (an item of a list, a value of an object)."""


def problem(message: str) -> PydanticCustomError:
    """An error whose message is ``message`` as it stands (raise it from a validator)."""
    return PydanticCustomError("kici", message)


def _not_null(value: Any) -> Any:
    if value is None:  # only a field that is present runs its validators: absent keeps the default
        raise problem("must be a string")
    return value


_OptionalText = Annotated[str | None, BeforeValidator(_not_null)]
"""A string that may be left out but, when given, is not ``null``."""


class Body(BaseModel):
    """Base of the bodies: strict types (no ``"1"`` for 1, no 1 for true), unknown fields ignored."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    REQUIRED: ClassVar[Mapping[str, str]] = {}
    """Messages for missing required fields other than ``is required``."""


B = TypeVar("B", bound=Body)


def _length_message(metadata: list[Any]) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, MinLen)), 0)
    high = next(m.max_length for m in metadata if isinstance(m, MaxLen))
    return f"must be {low}..{high} characters"


def _message(model: type[Body], err: ErrorDetails) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "kici":
        return err["msg"]
    if kind == "extra_forbidden":
        return "unknown field"
    field = model.model_fields.get(str(loc[0])) if loc else None
    if field is None:
        return "is invalid"
    if kind == "missing" or (len(loc) == 1 and field.is_required() and err.get("input", 0) is None):
        return model.REQUIRED.get(str(loc[0]), "is required")
    if len(loc) > 1:
        return _NESTED.get(kind, "is invalid")
    if kind in ("string_too_short", "string_too_long") and any(isinstance(m, MaxLen) for m in field.metadata):
        return _length_message(field.metadata)
    return field.description or "is invalid"


def details(model: type[Body], exc: ValidationError) -> list[dict[str, Any]]:
    """The ``details`` of a 400 answer for ``exc``: one ``{"path", "message"}`` per problem, in body order."""
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        item = {"path": list(err["loc"]), "message": _message(model, err)}
        if item not in out:
            out.append(item)
    return out


def parse(model: type[B], body: Mapping[str, Any]) -> B:
    """``body`` as a ``model``.

    Raises:
        AdminHTTPError: 400 validation error naming every wrong field (see the module docstring).
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation(details(model, exc)) from None


# ------------------------------------------------------------------------------------------ tokens
class AdminTokenBody(Body):
    """``POST /api/v1/admin/tokens``."""

    REQUIRED: ClassVar[Mapping[str, str]] = {"role": f"is required: one of {', '.join(ALL_ROLES)}"}

    label: str = Field(min_length=1, max_length=255, description="must be a string")
    role: AdminRole = Field(description=f"must be one of {', '.join(ALL_ROLES)}")
    routingKey: _OptionalText = Field(default=None, min_length=1, max_length=255, description="must be a string")


class AgentTokenBody(Body):
    """``POST /api/v1/agent-tokens``: each label is a path of its own (``["labels", 2]``)."""

    labels: list[str] | None = Field(default=None, description="must be an array of strings")
    mandatoryLabels: list[str] | None = Field(default=None, description="must be an array of strings")
    createdBy: _OptionalText = Field(default=None, min_length=1, max_length=255, description="must be a string")


# ------------------------------------------------------------------------------------------ runs and gc
class RerunBody(Body):
    """``POST /api/v1/admin/runs/{id}/rerun``."""

    failedOnly: bool = Field(default=False, description="must be a boolean")


class CancelRunBody(Body):
    """``POST /api/v1/admin/runs/{id}/cancel``."""

    force: bool = Field(default=False, description="must be a boolean")


class GcBody(Body):
    """``POST /api/v1/admin/gc``: no other fields."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    dryRun: bool = Field(default=False, description="must be a boolean")


# ------------------------------------------------------------------------------------------ workflows
_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_NON_EMPTY = "must be a non-empty string"


class WorkflowDispatchBody(Body):
    """``POST /api/v1/admin/workflows/dispatch``: names are trimmed; ``inputs`` are checked against the
    workflow's declared inputs later (their paths are ``["inputs", <name>]``)."""

    REQUIRED: ClassVar[Mapping[str, str]] = {k: _NON_EMPTY for k in ("source", "repo", "workflow", "ref")}

    source: _Text = Field(description=_NON_EMPTY)
    repo: _Text = Field(description=_NON_EMPTY)
    workflow: _Text = Field(description=_NON_EMPTY)
    ref: _Text = Field(description=_NON_EMPTY)
    type: _Text | None = Field(default=None, description=_NON_EMPTY)
    inputs: dict[str, Any] = Field(default_factory=dict, description="must be an object of input values")

    @field_validator("repo")
    @classmethod
    def _owner_repo(cls, value: str) -> str:
        if value.count("/") != 1:
            raise problem("must be owner/repo")
        return value

    @field_validator("inputs", mode="before")
    @classmethod
    def _null_inputs(cls, value: Any) -> Any:
        if value is None:
            raise problem("must be an object of input values")
        return value

