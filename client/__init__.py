"""statehost's Python client: the State Backed wire contract from Python (speaks only that contract)."""

from .api import ExchangedToken, StatehostClient, exchange_token
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
from .sync import SyncStatehostClient
from .tokens import anonymous_subject_token, sign_token

__all__ = [
    "ApiError",
    "ClientError",
    "ConflictError",
    "ExchangedToken",
    "MissingOrgError",
    "MissingScopeError",
    "MissingUserError",
    "NoMigrationPathError",
    "NotFoundError",
    "OrgHeaderRequiredError",
    "RejectedByMachineAuthorizerError",
    "StatehostClient",
    "StatehostError",
    "SyncStatehostClient",
    "UnauthorizedError",
    "anonymous_subject_token",
    "exchange_token",
    "sign_token",
]
