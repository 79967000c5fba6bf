"""Errors the server answers with. Each carries its HTTP status and a stable ``code`` (wire-api 1.4).

::

    ApiError                       status, code, message, parameter
    ├── InvalidParameter           400 invalid-parameter
    ├── MissingUser                403 missing-user (no, invalid or expired token; failed token exchange)
    ├── Rejected                   403 rejected-by-machine-authorizer
    ├── NotFound                   404 not-found
    ├── Conflict                   409 invalid-state (exists, or moved on meanwhile)
    ├── Paused                     409 invalid-state (the instance is paused)
    ├── MachineError               422 machine-error (the machine threw or hit a limit; ``limit`` names it)
    ├── Timeout                    504 timeout (the settle window ended before any transition)
    └── Unavailable                503 unavailable (the server is shutting down, the database is unreachable)
        ├── StorageFull            503 storage-full (the database's disk is full: nothing was stored)
        └── StorageUnavailable     503 storage-unavailable (the database failed to read or write: I/O error)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "Conflict",
    "InvalidParameter",
    "MachineError",
    "MissingUser",
    "NotFound",
    "Paused",
    "Rejected",
    "StorageFull",
    "StorageUnavailable",
    "Timeout",
    "Unavailable",
]


class ApiError(Exception):
    status = 500
    code = "internal-error"

    def __init__(self, message: str, *, parameter: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        body.update(self.extra)
        return body


class InvalidParameter(ApiError):
    status, code = 400, "invalid-parameter"


class MissingUser(ApiError):
    status, code = 403, "missing-user"


class Rejected(ApiError):
    status, code = 403, "rejected-by-machine-authorizer"


class NotFound(ApiError):
    status, code = 404, "not-found"


class Conflict(ApiError):
    status, code = 409, "invalid-state"


class Superseded(Conflict):
    """Another writer moved the instance on, or took its lease, while this request's window ran:
    nothing of the refused round was stored or performed, and sending the request again is safe
    (503, so that clients retry)."""

    status, code = 503, "unavailable"


class Paused(ApiError):
    status, code = 409, "invalid-state"


class MachineError(ApiError):
    status, code = 422, "machine-error"


class Timeout(ApiError):
    status, code = 504, "timeout"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


class StorageFull(Unavailable):
    """The database's disk (or its size limit) is full: the transaction was rolled back, nothing of
    it is stored. Sending the request again succeeds once space is freed (no restart needed)."""

    status, code = 503, "storage-full"


class StorageUnavailable(Unavailable):
    """The database failed to write or read (an I/O error, a read-only file, a lock held too long):
    the transaction was rolled back, nothing of it is stored; try again."""

    status, code = 503, "storage-unavailable"
