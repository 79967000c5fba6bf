"""statehost's Python client: the State Backed wire contract from Python (speaks only that contract)."""

from .api import StatehostClient
from .errors import (
    ApiError,
    ClientError,
    ConflictError,
    MissingOrgError,
    MissingScopeError,
    MissingUserError,
    NoMigrationPathError,
    NotFoundError,
    OrgHeaderRequiredError,
    RejectedByMachineAuthorizerError,
    StatehostError,
    UnauthorizedError,
)
from .tokens import sign_token

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
    "StatehostClient",
    "StatehostError",
    "UnauthorizedError",
    "sign_token",
]
