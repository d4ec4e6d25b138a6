"""What ``import bgtransfer`` exports (issue 15): exactly the names below, each importable,
including every name of the public contract (CONTRACT.md) and the version from the package
metadata."""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import subprocess
import sys

import pytest

import bgtransfer

EXPECTED = [
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

# The contract's names (CONTRACT.md, "Python API" and the later waves): methods and fields
# that users and outside checks call.
CONTRACT_SESSION = [
    "download", "upload", "tasks", "task", "schedule", "jobs", "remove", "completions",
    "close", "download_many", "wait_all",
]  # fmt: skip
CONTRACT_ASYNC_SESSION = [*CONTRACT_SESSION[:-3], "events", "aclose"]
CONTRACT_TASK = [
    "id", "state", "bytes_received", "bytes_expected", "status_code", "error", "detail",
    "metadata", "path", "url", "suspend", "resume", "cancel", "wait", "remove", "acknowledge",
]  # fmt: skip
CONTRACT_JOB = ["id", "url", "path", "every", "next_run", "runs", "cancel"]


def test_all_is_exactly_the_expected_list() -> None:
    assert sorted(bgtransfer.__all__) == EXPECTED
    assert len(set(bgtransfer.__all__)) == len(bgtransfer.__all__)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_exported_name_imports(name: str) -> None:
    module = importlib.import_module("bgtransfer")
    obj = getattr(module, name)
    if isinstance(obj, type):
        assert obj.__module__ == "bgtransfer"  # shown as bgtransfer.X, not a private module
    exec(f"from bgtransfer import {name}", {})


def test_star_import_gives_the_list() -> None:
    namespace: dict[str, object] = {}
    exec("from bgtransfer import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED


def test_one_error_hierarchy() -> None:
    errors = [getattr(bgtransfer, n) for n in EXPECTED]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) >= 20
    for cls in errors:
        assert issubclass(cls, bgtransfer.TransferError), cls
        # Every class keeps its class across a process boundary (stored, sent as JSON).
        from bgtransfer._exceptions import error_from_dict

        back = error_from_dict(cls("why").to_dict())
        assert type(back) is cls
        assert back.message == "why"
    assert issubclass(bgtransfer.InvalidRequest, ValueError)
    assert issubclass(bgtransfer.DaemonUnavailable, bgtransfer.TransferError)


def test_daemon_unavailable_keeps_its_old_import_path() -> None:
    from bgtransfer._client import DaemonUnavailable

    assert DaemonUnavailable is bgtransfer.DaemonUnavailable


def test_contract_names_are_present() -> None:
    for name in CONTRACT_SESSION:
        assert callable(getattr(bgtransfer.Session, name)), name
    for name in CONTRACT_ASYNC_SESSION:
        assert callable(getattr(bgtransfer.AsyncSession, name)), name
    for name in CONTRACT_TASK:
        assert hasattr(bgtransfer.Task, name), name
        assert hasattr(bgtransfer.AsyncTask, name), name
    for name in CONTRACT_JOB:
        assert hasattr(bgtransfer.Job, name), name
        assert hasattr(bgtransfer.AsyncJob, name), name
    assert issubclass(bgtransfer.TaskState, enum.Enum)
    assert [m.name for m in bgtransfer.TaskState] == [
        "RUNNING", "SUSPENDED", "CANCELING", "COMPLETED",
    ]  # fmt: skip
    from bgtransfer import kony, voltmx

    assert voltmx.net.HttpRequest is kony.net.HttpRequest
    assert hasattr(voltmx, "constants")


def test_the_version_is_the_package_metadata() -> None:
    expected = importlib.metadata.version("bgtransfer")
    assert bgtransfer.__version__ == expected
    from bgtransfer._version import USER_AGENT

    assert f"bgtransfer/{expected}" == USER_AGENT
    out = subprocess.run(
        [sys.executable, "-m", "bgtransfer", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.split() == ["bgtransfer", expected]


def test_the_old_session_module_still_imports() -> None:
    from bgtransfer import _session

    for name in _session.__all__:
        assert getattr(_session, name) is not None
    assert _session.Session is bgtransfer.Session
    assert _session.resolve_home is bgtransfer.resolve_home
