"""Hub errors, each with the gRPC status code the server answers with."""

from __future__ import annotations

import grpc

__all__ = [
    "HubError",
    "NotFound",
    "AlreadyExists",
    "FailedPrecondition",
    "PermissionDenied",
    "InvalidArgument",
    "Unauthenticated",
    "DataLoss",
]


class HubError(Exception):
    """Base class: ``code`` is the gRPC status the server replies with."""

    code = grpc.StatusCode.INTERNAL


class NotFound(HubError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(HubError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(HubError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(HubError):
    code = grpc.StatusCode.PERMISSION_DENIED


class InvalidArgument(HubError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(HubError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DataLoss(HubError):
    """Stored weights are missing or damaged (e.g. a blob file deleted or changed on disk)."""

    code = grpc.StatusCode.DATA_LOSS
