"""Errors of the Python client, named like @statebacked/client's, chosen from status and ``code``
exactly as the official client does (wire-api 1.4).

::

    StatehostError(status, code, message, parameter)
    ├── ClientError                      400
    │   ├── OrgHeaderRequiredError       400 specify-org
    │   └── NoMigrationPathError         400 no-migration-path
    ├── UnauthorizedError                403
    │   ├── MissingOrgError              403 missing-org
    │   ├── MissingScopeError            403 missing-scope
    │   ├── MissingUserError             403 missing-user
    │   └── RejectedByMachineAuthorizerError  403 rejected-by-machine-authorizer
    ├── NotFoundError                    404
    ├── ConflictError                    409
    └── ApiError                         anything else
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "ClientError",
    "ConflictError",
    "MissingOrgError",
    "MissingScopeError",
    "MissingUserError",
    "NoMigrationPathError",
    "NotFoundError",
    "OrgHeaderRequiredError",
    "RejectedByMachineAuthorizerError",
    "StatehostError",
    "UnauthorizedError",
    "error_for",
]


class StatehostError(Exception):
    def __init__(self, status: int, code: str | None, message: str, parameter: str | None = None) -> None:
        super().__init__(f"{message} ({status}{', ' + code if code else ''})")
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter


class ClientError(StatehostError):
    pass


class OrgHeaderRequiredError(ClientError):
    pass


class NoMigrationPathError(ClientError):
    pass


class UnauthorizedError(StatehostError):
    pass


class MissingOrgError(UnauthorizedError):
    pass


class MissingScopeError(UnauthorizedError):
    pass


class MissingUserError(UnauthorizedError):
    pass


class RejectedByMachineAuthorizerError(UnauthorizedError):
    pass


class NotFoundError(StatehostError):
    pass


class ConflictError(StatehostError):
    pass


class ApiError(StatehostError):
    pass


_BY_CODE: dict[tuple[int, str], type[StatehostError]] = {
    (400, "specify-org"): OrgHeaderRequiredError,
    (400, "no-migration-path"): NoMigrationPathError,
    (403, "missing-org"): MissingOrgError,
    (403, "missing-scope"): MissingScopeError,
    (403, "missing-user"): MissingUserError,
    (403, "rejected-by-machine-authorizer"): RejectedByMachineAuthorizerError,
}
_BY_STATUS: dict[int, type[StatehostError]] = {
    400: ClientError,
    403: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
}


def error_for(status: int, code: str | None, message: str | None, parameter: str | None = None) -> StatehostError:
    cls = _BY_CODE.get((status, code or "")) or _BY_STATUS.get(status, ApiError)
    return cls(status, code, message or "error processing request", parameter)
