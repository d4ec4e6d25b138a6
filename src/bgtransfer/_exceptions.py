"""The one exception hierarchy of bgtransfer.

Every error the library raises or stores on a task derives from :class:`TransferError`::

    TransferError
    ├── InvalidRequest (also ValueError)   bad input, raised at once; no task is created
    │   └── CannotAdopt                    ``adopt``: this partial file cannot be resumed
    │       ├── NoPartialRecord            it carries no record (xattr or sidecar)
    │       ├── PartialRecordCorrupt       its record cannot be read
    │       ├── PartialRecordMismatch      the record found describes another file
    │       └── PartialInUse               a live task of this store writes it
    ├── Cancelled                          the task was cancelled by a caller
    ├── NetworkError                       transient: retried automatically while time remains
    │   ├── ConnectError
    │   └── ReadError                      reset or truncated body
    ├── TransferTimeout (also TimeoutError) idle, low-speed or resource timeout
    ├── HTTPStatusError (.status_code)     the server answered with a status that is not retried
    ├── RedirectError                      too many hops, non-http(s) target, https->http
    ├── ResumeError                        the server's range answers cannot be trusted
    │   └── ContentChanged                 the resource kept changing between attempts
    ├── IntegrityError                     length or sha256 mismatch at the end
    │   └── SourceChanged                  an upload's source file changed while it was sent
    ├── DestinationError                   the local file cannot be written or placed
    ├── TLSError                           the server's certificate does not verify, or the
    │                                      CA bundle cannot be used: not retried
    ├── InvalidTransition                  an operation that the task's state does not allow
    ├── TaskNotFound (also LookupError)
    ├── StoreError                         the SQLite store is unusable
    │   ├── StoreFull                      its disk is full: tasks wait, nothing is lost
    │   ├── LeaseLost                      fleet mode: this worker's claim on a task is gone
    │   └── StoreUnavailable               fleet mode: PostgreSQL cannot be reached or refuses
    ├── UnsafeHome                         the home, a file in it or the daemon socket is not
    │                                      this user's alone: refused, never used
    ├── DaemonStopped                      the daemon was stopped while this call waited
    └── DaemonUnavailable                  the home's daemon cannot be started or reached

Each class has a stable ``code`` so an error can be stored and sent as JSON
(:meth:`TransferError.to_dict`) and rebuilt as the same class (:func:`error_from_dict`).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Cancelled",
    "CannotAdopt",
    "ConnectError",
    "ContentChanged",
    "DaemonStopped",
    "DaemonUnavailable",
    "DestinationError",
    "FileTooLarge",
    "HTTPStatusError",
    "IntegrityError",
    "InvalidRequest",
    "InvalidTransition",
    "LeaseLost",
    "NetworkError",
    "NoPartialRecord",
    "PartialInUse",
    "PartialRecordCorrupt",
    "PartialRecordMismatch",
    "ReadError",
    "RedirectError",
    "RefreshFailed",
    "ResumeError",
    "SourceChanged",
    "SourceDropped",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "TLSError",
    "TaskNotFound",
    "TransferError",
    "TransferTimeout",
    "UnsafeHome",
    "error_from_dict",
]


class TransferError(Exception):
    """Base of every bgtransfer error."""

    code: ClassVar[str] = "transfer_error"

    def __init__(
        self, message: str, *, task_id: str | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.status_code = status_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "task_id": self.task_id,
            "status_code": self.status_code,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TransferError)
            and type(other) is type(self)
            and (self.to_dict() == other.to_dict())
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class InvalidRequest(TransferError, ValueError):
    code = "invalid_request"


class CannotAdopt(InvalidRequest):
    """``adopt``: the partial file cannot be resumed as asked (the subclass says why)."""

    code = "cannot_adopt"


class NoPartialRecord(CannotAdopt):
    """The file carries no partial record (no xattr, no sidecar): nothing says what it is."""

    code = "no_partial_record"


class PartialRecordCorrupt(CannotAdopt):
    """The partial record is there but cannot be read (damaged, foreign, or newer)."""

    code = "partial_record_corrupt"


class PartialRecordMismatch(CannotAdopt):
    """The record found beside the file describes another file (a sidecar copied or renamed
    without its partial)."""

    code = "partial_record_mismatch"


class PartialInUse(CannotAdopt):
    """An unfinished task of this store already writes this partial file."""

    code = "partial_in_use"


class Cancelled(TransferError):
    code = "cancelled"


class NetworkError(TransferError):
    code = "network_error"


class ConnectError(NetworkError):
    code = "connect_error"


class ReadError(NetworkError):
    code = "read_error"


class TransferTimeout(TransferError, TimeoutError):
    code = "timeout"


class HTTPStatusError(TransferError):
    code = "http_status"


class RedirectError(TransferError):
    code = "redirect_error"


class ResumeError(TransferError):
    code = "resume_error"


class ContentChanged(ResumeError):
    code = "content_changed"


class IntegrityError(TransferError):
    code = "integrity_error"


class SourceChanged(IntegrityError):
    code = "source_changed"


class RefreshFailed(TransferError):
    """The task's refresh hook (``refresh=``) could not give a new URL: the callable raised
    or returned something else than ``{"url": ..., "headers": {...}}``, or the command
    exited non-zero, timed out or printed no valid answer (its stderr's tail is in the
    message). Also raised when the refreshes are used up (see ``MAX_REFRESHES``)."""

    code = "refresh_failed"


class SourceDropped(IntegrityError):
    """Every source of a download with mirrors (``urls=``) was dropped for serving other
    bytes than the first one (the reasons are in the message and the attempt history)."""

    code = "source_dropped"


class FileTooLarge(TransferError):
    """The download is (or announced it would be) larger than ``max_bytes``."""

    code = "file_too_large"


class DestinationError(TransferError):
    code = "destination_error"


class TLSError(TransferError):
    """The server's TLS certificate failed verification (chain or hostname) against the
    trust store in use, or the task's CA bundle holds no usable certificate. Not retried:
    another try meets the same certificate (curl exit 60)."""

    code = "tls_error"


class InvalidTransition(TransferError):
    code = "invalid_transition"


class TaskNotFound(TransferError, LookupError):
    code = "task_not_found"


class StoreError(TransferError):
    code = "store_error"


class LeaseLost(StoreError):
    """Fleet mode: this worker's claim on the task is gone (its lease expired and another
    worker took the task over): the commit was refused, nothing of it stored."""

    code = "lease_lost"


class StoreFull(StoreError):
    """The home's disk is full: SQLite cannot commit. Tasks are suspended (their bytes
    kept) and go on by themselves once there is space; new tasks are refused until then."""

    code = "store_full"


class StoreUnavailable(StoreError):
    """Fleet mode: the PostgreSQL store cannot be reached (down, unreachable, timed out)
    or refuses this connection (wrong credentials, no such database). Nothing was done:
    the call can be made again once the store answers."""

    code = "store_unavailable"


class UnsafeHome(TransferError):
    """Another user could change the home (or a file in it, or answer on its socket): a store
    there could name a completion hook that then runs as you, so it is refused, never used."""

    code = "unsafe_home"


class DaemonStopped(TransferError):
    """The daemon was stopped (``daemon stop``) while this call waited on it; the call ends
    instead of starting the daemon again."""

    code = "daemon_stopped"


class DaemonUnavailable(TransferError):
    """The home's daemon could not be started, or holds the home but does not answer (for
    example stopped with SIGSTOP); the message says why and where its log is."""

    code = "daemon_unavailable"


_BY_CODE: dict[str, type[TransferError]] = {}


def _register(cls: type[TransferError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(TransferError)


def error_from_dict(data: dict[str, Any]) -> TransferError:
    """Rebuild an error stored with :meth:`TransferError.to_dict`, as the same class."""
    cls = _BY_CODE.get(str(data.get("code")), TransferError)
    status = data.get("status_code")
    return cls(
        str(data.get("message", "")),
        task_id=data.get("task_id"),
        status_code=int(status) if status is not None else None,
    )
