"""The ``voltmx.net`` namespace functions besides HttpRequest and FormData."""

from __future__ import annotations

from typing import Any

import bgtransfer
from bgtransfer.voltmx import _cookies, _integrity, constants
from bgtransfer.voltmx._errors import VoltMXError, bad_type, missing
from bgtransfer.voltmx._network import is_network_available

__all__ = [
    "clearCookies",
    "disableIntegrityCheck",
    "getCookies",
    "isNetworkAvailable",
    "removeIntegrityCheck",
    "setCookies",
    "setIntegrityCheck",
]


def isNetworkAvailable(networkType: str | None = None, optionsConfig: object = None) -> bool:
    if networkType is None:
        raise missing("isNetworkAvailable()", "a network type")
    if networkType not in constants.NETWORK_TYPES:
        raise bad_type("networkType must be one of the constants.NETWORK_TYPE_*", networkType)
    return is_network_available(networkType)


def getCookies(URL: object = None, cookieFormat: object = constants.COOKIES_IN_STRING,
               *, home: str | None = None) -> Any:  # fmt: skip
    if URL is None:
        raise missing("getCookies()", "a URL")
    return _cookies.get(bgtransfer.resolve_home(home), URL, cookieFormat)


def clearCookies(url: object = None, cookieName: object = None, *, home: str | None = None) -> None:
    _cookies.clear(bgtransfer.resolve_home(home), url, cookieName)


def setCookies(url: object = None, cookiesList: object = None, *, home: str | None = None) -> None:
    if cookiesList is None:
        raise missing("setCookies()", "a URL and a list of cookies")
    _cookies.put(bgtransfer.resolve_home(home), url, cookiesList)


def setIntegrityCheck(propertiesTable: object = None) -> None:
    if propertiesTable is None:
        raise VoltMXError(102, "invalid number of arguments: setIntegrityCheck(propertiesTable)")
    _integrity.set_params(propertiesTable)


def removeIntegrityCheck() -> None:
    _integrity.remove()


disableIntegrityCheck = removeIntegrityCheck  # the name some callers use for it
