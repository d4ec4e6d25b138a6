"""Volt MX's error objects, in bgtransfer's one hierarchy (all are ``InvalidRequest``)."""

from __future__ import annotations

from bgtransfer import InvalidRequest, InvalidTransition

__all__ = [
    "INVALID_NUMBER_OF_ARGUMENTS",
    "INVALID_PARAMETER_TYPE",
    "InvalidStateError",
    "VoltMXError",
    "VoltMXSyntaxError",
    "bad_type",
    "missing",
]

INVALID_PARAMETER_TYPE = 100
INVALID_NUMBER_OF_ARGUMENTS = 101


class VoltMXError(InvalidRequest):
    """Volt MX's ``VoltMXError``: ``errorCode`` (100 invalid parameter type, 101 invalid number
    of arguments, ...), ``name`` and ``message``."""

    code = "voltmx_error"
    name = "VoltMXError"

    def __init__(self, errorCode: int | None, message: str) -> None:
        super().__init__(message if errorCode is None else f"{message} (error {errorCode})")
        self.errorCode = errorCode


class VoltMXSyntaxError(VoltMXError):
    """``open()``'s SyntaxError: an unsupported method or a URL that cannot be resolved."""

    name = "SyntaxError"


class InvalidStateError(InvalidTransition):
    """A member was used at a point of the request's life where the API forbids it."""

    code = "invalid_state"
    name = "InvalidStateError"


def bad_type(what: str, value: object) -> VoltMXError:
    return VoltMXError(
        INVALID_PARAMETER_TYPE, f"invalid parameter type: {what}, not {type(value).__name__}"
    )


def missing(member: str, needs: str) -> VoltMXError:
    return VoltMXError(
        INVALID_NUMBER_OF_ARGUMENTS, f"invalid number of arguments: {member} needs {needs}"
    )
