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
from typing import Annotated, Any, ClassVar, Literal, TypeVar

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

from kici_core import identifiers, webhooks
from kici_core.errors import InvalidInput
from kici_core.token_records import AdminRole
from kici_runtime.orchestrator.admin.auth import ALL_ROLES, validation

__all__ = [
    "AdminTokenBody",
    "AgentTokenBody",
    "Body",
    "CancelRunBody",
    "GcBody",
    "GenericSourceBody",
    "GenericSourceUpdateBody",
    "GitHubSourceBody",
    "GitHubSourceUpdateBody",
    "RerunBody",
    "WorkflowDispatchBody",
    "details",
    "parse",
    "problem",
    "validate",
]

_NESTED = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be a boolean",
    "dict_type": "must be an object",
    "list_type": "must be an array",
}
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


def validate(model: type[B], body: Mapping[str, Any]) -> tuple[B | None, list[dict[str, Any]]]:
    """``body`` as a ``model`` and no problems, or None and the problems (for handlers that add checks of
    their own before answering)."""
    try:
        return model.model_validate(body), []
    except ValidationError as exc:
        return None, details(model, exc)


def parse(model: type[B], body: Mapping[str, Any]) -> B:
    """``body`` as a ``model``.

    Raises:
        AdminHTTPError: 400 validation error naming every wrong field (see the module docstring).
    """
    value, problems = validate(model, body)
    if value is None:
        raise validation(problems)
    return value


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


# ------------------------------------------------------------------------------------------ sources
MAX_ORG_ID = 16
_STRING = "must be a string"


class GitHubSourceBody(Body):
    """``POST /api/v1/admin/sources`` (``provider`` and ``appId`` are checked by the handler first)."""

    name: str = Field(min_length=1, max_length=255, description=_STRING)
    privateKey: str = Field(min_length=1, max_length=20_000, description=_STRING)
    webhookSecret: _OptionalText = Field(default=None, min_length=1, max_length=1024, description=_STRING)
    slug: _OptionalText = Field(default=None, min_length=1, max_length=255, description=_STRING)
    customerId: _OptionalText = Field(default=None, min_length=1, max_length=MAX_ORG_ID, description=_STRING)
    apiUrl: _OptionalText = Field(default=None, min_length=1, max_length=2048, description=_STRING)
    verify: bool | None = Field(default=None, description="must be a boolean")


class GitHubSourceUpdateBody(Body):
    """``PATCH /api/v1/admin/sources/{routingKey}``: ``slug`` and ``apiUrl`` may be ``null`` (cleared)."""

    name: _OptionalText = Field(default=None, min_length=1, max_length=255, description=_STRING)
    privateKey: _OptionalText = Field(default=None, min_length=1, max_length=20_000, description=_STRING)
    webhookSecret: _OptionalText = Field(default=None, min_length=1, max_length=1024, description=_STRING)
    customerId: _OptionalText = Field(default=None, min_length=1, max_length=MAX_ORG_ID, description=_STRING)
    slug: str | None = Field(default=None, min_length=1, max_length=255, description=_STRING)
    apiUrl: str | None = Field(default=None, min_length=1, max_length=2048, description=_STRING)
    dropPreviousWebhookSecret: bool | None = Field(default=None, description="must be a boolean")


def _identifier(check: Any, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(check(value))
    except InvalidInput as exc:
        raise problem(exc.message) from None


def _method(value: str | None) -> str | None:
    if value is not None and value not in webhooks.GENERIC_METHODS:
        raise problem(f"must be one of {', '.join(webhooks.GENERIC_METHODS)}")
    return value


class _GenericSettings(Body):
    """The optional settings of a generic source, shared by create and update; a field that is given as
    ``null`` is cleared (the header and path names) or left as it is (the others)."""

    eventTypeHeader: str | None = Field(default=None, min_length=1, max_length=255, description=_STRING)
    eventTypePath: str | None = Field(default=None, min_length=1, max_length=255, description=_STRING)
    idempotencyKeyHeader: str | None = Field(default=None, min_length=1, max_length=255, description=_STRING)
    idempotencyKeyPath: str | None = Field(default=None, min_length=1, max_length=255, description=_STRING)
    dedupWindowSeconds: int | None = Field(
        default=None, ge=0, le=86_400 * 30, description=f"must be an integer in 0..{86_400 * 30}"
    )
    maxPayloadBytes: int | None = Field(
        default=None, ge=1, le=10 * 1024 * 1024, description=f"must be an integer in 1..{10 * 1024 * 1024}"
    )
    rateLimitRpm: int | None = Field(default=None, ge=1, le=1_000_000, description="must be an integer in 1..1000000")
    allowedEvents: list[str] | None = Field(default=None, description="must be an array of strings")
    enabled: bool | None = Field(default=None, description="must be a boolean")
    verificationMethod: str | None = Field(default=None, description=_STRING)
    verificationConfig: dict[str, Any] | None = Field(default=None, description="must be an object")
    gitConfig: Any = None

    _known_method = field_validator("verificationMethod")(_method)

    def settings(self) -> dict[str, Any]:
        """The given settings as ``GenericSource`` field values (verification and git config excluded)."""
        given = self.model_fields_set
        out: dict[str, Any] = {}
        for api, attr in (
            ("eventTypeHeader", "event_type_header"),
            ("eventTypePath", "event_type_path"),
            ("idempotencyKeyHeader", "idempotency_key_header"),
            ("idempotencyKeyPath", "idempotency_key_path"),
        ):
            if api in given:
                out[attr] = getattr(self, api)
        for api, attr in (
            ("dedupWindowSeconds", "dedup_window_seconds"),
            ("maxPayloadBytes", "max_payload_bytes"),
            ("rateLimitRpm", "rate_limit_rpm"),
            ("enabled", "enabled"),
        ):
            if getattr(self, api) is not None:
                out[attr] = getattr(self, api)
        if "allowedEvents" in given:
            out["allowed_events"] = None if self.allowedEvents is None else tuple(self.allowedEvents)
        return out


def _org_id(value: str) -> str | None:
    return _identifier(identifiers.check_org_id, value)


def _source_name(value: str | None) -> str | None:
    return _identifier(identifiers.check_source_name, value)


class _GenericIdentity(Body):
    orgId: str = Field(min_length=1, max_length=MAX_ORG_ID, description=_STRING)
    name: str = Field(min_length=1, max_length=255, description=_STRING)
    providerType: Literal["generic", "local"] | None = Field(default=None, description="must be one of generic, local")

    _checked_org_id = field_validator("orgId")(_org_id)
    _checked_name = field_validator("name")(_source_name)


class GenericSourceBody(_GenericSettings, _GenericIdentity):
    """``POST /api/v1/admin/generic-sources``: ``orgId`` and ``name`` first, then the shared settings."""


class GenericSourceUpdateBody(_GenericSettings):
    """``PATCH /api/v1/admin/generic-sources/{id}``: a partial update; ``gitConfig: null`` clears it."""

    name: _OptionalText = Field(default=None, min_length=1, max_length=255, description=_STRING)

    _checked_name = field_validator("name")(_source_name)
