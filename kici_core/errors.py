"""The project's error tree.

::

    KiciError (70 internal)
    ├── ConfigError (78)                 bad or missing configuration; refuses boot
    ├── InvalidInput (65)                untrusted data failed validation
    │   ├── LockfileError (65)           .kici/kici.lock.json is invalid; names the JSON path
    │   └── ProtocolError (65)           a wire message broke the protocol
    ├── NotFound (66)                    a named thing does not exist
    ├── Conflict (65)                    a state transition lost a race or is not allowed
    ├── Unavailable (69)                 a dependency is down; retry later
    │   ├── StorageUnavailable (69)      PostgreSQL or object storage cannot be reached
    │   └── UpstreamUnavailable (69)     GitHub or the Platform cannot be reached
    ├── SecretDecryptError (78)          KICI_SECRET_KEY does not match the stored secrets
    ├── AuthError (77)                   missing or wrong credentials
    └── ProcessingTimeout (70)           processing one delivery ran past its time budget

Every class carries ``exit_code``; the CLI exits with it. Messages never contain secret values.
"""

from __future__ import annotations


class KiciError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code: int = 70

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(KiciError):
    """Configuration is missing or invalid."""

    exit_code = 78


class InvalidInput(KiciError):
    """Input failed validation."""

    exit_code = 65


class LockfileError(InvalidInput):
    """The lock file is invalid.

    ``path`` is a JSON path such as ``workflows[2].jobs[0].needs[1]``; ``reason`` says what is wrong.
    ``str(err)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)


class ProtocolError(InvalidInput):
    """A wire message broke the protocol."""


class NotFound(KiciError):
    """Not found."""

    exit_code = 66


class Conflict(KiciError):
    """The change conflicts with the current state."""

    exit_code = 65


class Unavailable(KiciError):
    """A dependency is unavailable; try again later."""

    exit_code = 69


class StorageUnavailable(Unavailable):
    """The database or object storage is unavailable."""


class UpstreamUnavailable(Unavailable):
    """An upstream service (GitHub, the Platform) is unavailable."""


class SecretDecryptError(KiciError):
    """cannot decrypt: KICI_SECRET_KEY does not match the key these secrets were written with"""

    exit_code = 78


class AuthError(KiciError):
    """Authentication failed."""

    exit_code = 77


class ProcessingTimeout(KiciError):
    """processing the delivery ran past its time budget"""
