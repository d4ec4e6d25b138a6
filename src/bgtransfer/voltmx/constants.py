"""``voltmx.constants``: the names the Volt MX API uses, with the seed's spelling.

Values follow the iOS runtime where its headers give them (``KonyTypes.h``: task states 0-3,
integrity statuses 0-2); response types stay the strings the port always used, so that
``"..." + request.responseType`` works as in JavaScript.
"""

from __future__ import annotations

import enum

HTTP_METHOD_GET = "GET"
HTTP_METHOD_POST = "POST"
# Extensions: Volt MX documents GET and POST only.
HTTP_METHOD_PUT = "PUT"
HTTP_METHOD_DELETE = "DELETE"
HTTP_METHOD_HEAD = "HEAD"
HTTP_METHOD_PATCH = "PATCH"
HTTP_METHOD_OPTIONS = "OPTIONS"

HTTP_READY_STATE_UNSENT = 0
HTTP_READY_STATE_OPENED = 1
HTTP_READY_STATE_HEADERS_RECEIVED = 2
HTTP_READY_STATE_LOADING = 3
HTTP_READY_STATE_DONE = 4

HTTP_RESPONSE_TYPE_TEXT = "text"
HTTP_RESPONSE_TYPE_JSON = "json"
HTTP_RESPONSE_TYPE_DOCUMENT = "document"
HTTP_RESPONSE_TYPE_RAWDATA = "rawdata"
# iOS defines these two as well; no Content-Type maps to them in the docs' table.
HTTP_RESPONSE_TYPE_BLOB = "blob"
HTTP_RESPONSE_TYPE_ARRAYBUFFER = "arraybuffer"

HTTP_INTEGRITY_CHECK_NOT_DONE = 0
HTTP_INTEGRITY_CHECK_SUCCESSFUL = 1
HTTP_INTEGRITY_CHECK_FAILED = 2

NETWORK_TYPE_2G = "2G"
NETWORK_TYPE_3G = "3G"
NETWORK_TYPE_4G = "4G"
NETWORK_TYPE_5G = "5G"
NETWORK_TYPE_WIFI = "WIFI"
NETWORK_TYPE_ETHERNET = "ETHERNET"
NETWORK_TYPE_ANY = "ANY"

COOKIES_IN_STRING = "string"
COOKIES_IN_JSON = "json"


class SessionTaskState(enum.IntEnum):
    """``getTaskState()``'s value: a number on iOS (``KonyTypes.h``), compared to the constants."""

    RUNNING = 0
    SUSPENDED = 1
    CANCELING = 2
    COMPLETED = 3


SESSION_TASK_STATE_RUNNING = SessionTaskState.RUNNING
SESSION_TASK_STATE_SUSPENDED = SessionTaskState.SUSPENDED
SESSION_TASK_STATE_CANCELING = SessionTaskState.CANCELING
SESSION_TASK_STATE_COMPLETED = SessionTaskState.COMPLETED

HTTP_METHODS = frozenset(
    {
        HTTP_METHOD_GET,
        HTTP_METHOD_POST,
        HTTP_METHOD_PUT,
        HTTP_METHOD_DELETE,
        HTTP_METHOD_HEAD,
        HTTP_METHOD_PATCH,
        HTTP_METHOD_OPTIONS,
    }
)
NETWORK_TYPES = frozenset(
    {
        NETWORK_TYPE_2G,
        NETWORK_TYPE_3G,
        NETWORK_TYPE_4G,
        NETWORK_TYPE_5G,
        NETWORK_TYPE_WIFI,
        NETWORK_TYPE_ETHERNET,
        NETWORK_TYPE_ANY,
    }
)
