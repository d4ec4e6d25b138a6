"""Volt MX's error objects, in bgtransfer's one hierarchy (all are ``InvalidRequest``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from bgtransfer import InvalidRequest, InvalidTransition
from bgtransfer.voltmx import constants

__all__ = [
    "INVALID_NUMBER_OF_ARGUMENTS",
    "INVALID_PARAMETER_TYPE",
    "InvalidStateError",
    "VoltMXError",
    "VoltMXSyntaxError",
    "bad_type",
    "check_open",
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


def check_open(method: object, url: object, username: object, password: object) -> tuple[str, str]:
    """(METHOD, url) for open(), or its argument errors: 101 (fewer than two), 100 (not
    strings), SyntaxError (a method other than the HTTP_METHOD_* ones, or a URL that is not
    absolute http(s))."""
    if method is None or url is None:
        raise missing("open()", "a method and a URL")
    if not isinstance(method, str):
        raise bad_type("the request method must be a string", method)
    if not isinstance(url, str):
        raise bad_type("the URL must be a string", url)
    for name, val in (("username", username), ("password", password)):
        if val is not None and not isinstance(val, str):
            raise bad_type(f"{name} must be a string", val)
    if method.upper() not in constants.HTTP_METHODS:
        raise VoltMXSyntaxError(
            None, f"unknown HTTP method {method!r}; use one of the constants.HTTP_METHOD_*"
        )
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise VoltMXSyntaxError(None, f"URL must be an absolute http(s) URL: {url!r}")
    return method.upper(), url
