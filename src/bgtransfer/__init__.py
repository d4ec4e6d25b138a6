"""bgtransfer: durable background HTTP transfers that survive exits, crashes and restarts."""

from bgtransfer._exceptions import (
    Cancelled,
    CannotAdopt,
    ConnectError,
    ContentChanged,
    DaemonStopped,
    DaemonUnavailable,
    DestinationError,
    FileTooLarge,
    HTTPStatusError,
    IntegrityError,
    InvalidRequest,
    InvalidTransition,
    NetworkError,
    NoPartialRecord,
    PartialInUse,
    PartialRecordCorrupt,
    PartialRecordMismatch,
    ReadError,
    RedirectError,
    RefreshFailed,
    ResumeError,
    SourceChanged,
    SourceDropped,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TaskNotFound,
    TLSError,
    TransferError,
    TransferTimeout,
    UnsafeHome,
)
from bgtransfer._home import resolve_home
from bgtransfer._jobs_api import AsyncJob, Job
from bgtransfer._models import Event, TaskState
from bgtransfer._session import AsyncSession, AsyncTask, Session, Task
from bgtransfer._sources_api import metalink_downloads
from bgtransfer._version import __version__ as __version__

__all__ = [
    "AsyncJob",
    "AsyncSession",
    "AsyncTask",
    "Cancelled",
    "CannotAdopt",
    "ConnectError",
    "ContentChanged",
    "DaemonStopped",
    "DaemonUnavailable",
    "DestinationError",
    "Event",
    "FileTooLarge",
    "HTTPStatusError",
    "IntegrityError",
    "InvalidRequest",
    "InvalidTransition",
    "Job",
    "NetworkError",
    "NoPartialRecord",
    "PartialInUse",
    "PartialRecordCorrupt",
    "PartialRecordMismatch",
    "ReadError",
    "RedirectError",
    "RefreshFailed",
    "ResumeError",
    "Session",
    "SourceChanged",
    "SourceDropped",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "TLSError",
    "Task",
    "TaskNotFound",
    "TaskState",
    "TransferError",
    "TransferTimeout",
    "UnsafeHome",
    "metalink_downloads",
    "resolve_home",
]


def _set_public_module() -> None:
    # Show bgtransfer.TaskState, not bgtransfer._models.TaskState, in reprs and docs.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            obj.__module__ = "bgtransfer"


_set_public_module()
