"""The voltmx port against the real test server, in foreground and background mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgtransfer import InvalidRequest, TaskState
from bgtransfer import voltmx as vx
from bgtransfer.testing import FaultServer
from bgtransfer.voltmx.net import InvalidStateError
from tests.daemon.conftest import kill_daemon

constants = vx.constants
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "voltmx"
BODY = b'{"guide": "iPhone App Programming Guide", "pages": 42}'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    monkeypatch.setenv("BGTRANSFER_HOME", str(h))
    yield h
    vx.net._close_sessions()
    kill_daemon(h)


@pytest.fixture(params=[False, True], ids=["foreground", "background"])
def background(request: pytest.FixtureRequest, home: Path) -> bool:
    return bool(request.param)


def new_request(background: bool, config: dict[str, object] | None = None) -> vx.net.HttpRequest:
    r = vx.net.HttpRequest(config)
    r.backgroundTransfer = background
    return r


def test_ready_states_status_headers_and_response(
    server: FaultServer, background: bool, key: str
) -> None:
    url = server.add(f"guide-{key}.json", BODY)
    seen: list[tuple[int, int]] = []
    r = new_request(background)
    r.onReadyStateChange = lambda req: seen.append((req.readyState, req.status))
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT
    r.open(constants.HTTP_METHOD_GET, url)
    r.setRequestHeader("X-App", "demo")
    r.responseType = constants.HTTP_RESPONSE_TYPE_JSON
    r.send()
    r.wait(timeout=30)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert seen[0][1] == 0
    assert seen[1][1] == 200
    assert r.status == 200
    assert r.statusText == "OK"
    assert r.response == json.loads(BODY)
    assert r.getResponseHeader("Content-Length") == str(len(BODY))
    assert r.getResponseHeader("x-missing") is None
    headers = r.getAllResponseHeaders()
    assert f"content-length: {len(BODY)}\r\n" in headers
    assert headers == "".join(sorted(headers.splitlines(keepends=True)))
    assert Path(r.responseFile or "").read_bytes() == BODY
    req = list(server.requests(f"/r/guide-{key}.json"))[-1]
    assert req.headers.get("x-app") == "demo"
    with pytest.raises(InvalidStateError, match="loading"):
        r.responseType = constants.HTTP_RESPONSE_TYPE_RAWDATA


def test_response_types(server: FaultServer, background: bool, key: str) -> None:
    url = server.add(f"types-{key}", BODY)
    for rtype, expected in [
        (constants.HTTP_RESPONSE_TYPE_TEXT, BODY.decode()),
        (constants.HTTP_RESPONSE_TYPE_RAWDATA, BODY),
        (constants.HTTP_RESPONSE_TYPE_JSON, json.loads(BODY)),
    ]:
        r = new_request(background)
        r.responseType = rtype
        r.open(constants.HTTP_METHOD_GET, url)
        r.send()
        assert r.wait(timeout=30).response == expected


def test_http_error_and_network_error(server: FaultServer, background: bool, key: str) -> None:
    r = new_request(background)
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/100?status=404&key={key}"))
    r.send()
    r.wait(timeout=30)
    assert r.readyState == 4
    assert (r.status, r.statusText) == (404, "Not Found")
    assert r.response == ""
    assert r.responseFile is None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    states: list[int] = []
    r2 = new_request(background, {"timeoutIntervalForResource": 1})
    r2.onReadyStateChange = lambda req: states.append(req.readyState)
    r2.open(constants.HTTP_METHOD_GET, f"http://127.0.0.1:{port}/x")
    r2.send()
    r2.wait(timeout=30)
    assert states == [1, 4]
    assert r2.status == 0
    assert r2.getAllResponseHeaders() == ""


def test_idle_timeout_from_config_retries_a_stall(
    server: FaultServer, background: bool, key: str
) -> None:
    url = server.url(f"/gen/1000?stall_headers=5&times=1&key={key}")
    r = new_request(
        background, {"timeoutIntervalForRequest": 0.5, "timeoutIntervalForResource": 30}
    )
    r.open(constants.HTTP_METHOD_GET, url)
    r.send()
    r.wait(timeout=30)
    assert r.status == 200
    reqs = [x for x in server.requests("/gen/") if x.query.get("key") == key]
    assert len(reqs) == 2
    assert 0.4 < reqs[1].time - reqs[0].time < 3


def test_abort(server: FaultServer, background: bool, key: str) -> None:
    states: list[int] = []
    r = new_request(background)
    r.onReadyStateChange = lambda req: states.append(req.readyState)
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/1000000?rate=100000&key={key}"))
    r.send()
    time.sleep(0.3)
    r.abort()
    assert states[-1] == 4
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT
    assert r.status == 0
    assert r.task is not None
    assert r.task.state is TaskState.COMPLETED


def test_background_members(server: FaultServer, home: Path, key: str) -> None:
    r = vx.net.HttpRequest({"sessionIdentifier": "com.example.bg"})
    r.backgroundTransfer = True
    assert str(r.getSession()) == "BackgroundSession(com.example.bg)"
    r.open(constants.HTTP_METHOD_GET, server.url(f"/gen/2000000?rate=500000&key={key}"))
    with pytest.raises(InvalidStateError, match="before open"):
        r.backgroundTransfer = False
    assert r.backgroundTransfer is True
    with pytest.raises(InvalidStateError, match="send"):
        r.getTaskState()
    r.send()
    assert r.getTaskState() == constants.SESSION_TASK_STATE_RUNNING
    r.suspend()
    assert r.getTaskState() == constants.SESSION_TASK_STATE_SUSPENDED
    held = r.task.bytes_received if r.task else 0
    time.sleep(0.3)
    assert r.task is not None
    assert r.task.bytes_received == held
    r.resume()
    assert r.getTaskState() == constants.SESSION_TASK_STATE_RUNNING
    r.wait(timeout=60)
    assert r.getTaskState() == constants.SESSION_TASK_STATE_COMPLETED
    r.resume()  # on a completed task: nothing happens, as on iOS
    assert r.status == 200


def test_foreground_request_refuses_background_members(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/10"))
    r.send()
    for member in (r.suspend, r.resume, r.getTaskState):
        with pytest.raises(InvalidStateError, match="backgroundTransfer = true"):
            member()
    r.wait(timeout=30)


def test_bad_input(server: FaultServer, home: Path) -> None:
    with pytest.raises(InvalidRequest, match="config must be a dict"):
        vx.net.HttpRequest("fast")  # type: ignore[arg-type]
    for bad in (-1, 0, "60", float("nan")):
        with pytest.raises(InvalidRequest, match="timeoutIntervalForRequest"):
            vx.net.HttpRequest({"timeoutIntervalForRequest": bad})
    with pytest.raises(InvalidRequest, match="timeoutIntervalForResource"):
        vx.net.HttpRequest({"timeoutIntervalForResource": -5})
    with pytest.raises(InvalidRequest, match="unknown config keys: bogus"):
        vx.net.HttpRequest({"bogus": 1})
    r = vx.net.HttpRequest()
    with pytest.raises(InvalidStateError, match=r"send\(\) must be called after open\(\)"):
        r.send()
    with pytest.raises(InvalidStateError, match="after open"):
        r.setRequestHeader("X", "1")
    with pytest.raises(InvalidRequest, match="unknown HTTP method 'FETCH'"):
        r.open("FETCH", server.url("/gen/10"))
    with pytest.raises(InvalidRequest, match="absolute http"):
        r.open(constants.HTTP_METHOD_GET, "ftp://x/y")
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT  # still usable
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/10"))
    with pytest.raises(InvalidRequest, match="token"):
        r.setRequestHeader("Bad Name", "1")
    with pytest.raises(InvalidRequest, match="responseType"):
        r.responseType = "blob"
    r.send()
    with pytest.raises(InvalidStateError, match="already called"):
        r.send()
    with pytest.raises(InvalidStateError, match="after send"):
        r.open(constants.HTTP_METHOD_GET, server.url("/gen/10"))
    with pytest.raises(InvalidStateError, match="before send"):
        r.setRequestHeader("X", "1")
    r.wait(timeout=30)
    post = vx.net.HttpRequest()
    post.open(constants.HTTP_METHOD_POST, server.url("/echo"))
    with pytest.raises(InvalidRequest, match="not supported yet"):
        post.send("data")


def test_synchronous_open(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/1000"), False)
    r.send()
    assert r.readyState == constants.HTTP_READY_STATE_DONE
    assert r.status == 200


def test_print(capsys: pytest.CaptureFixture[str]) -> None:
    vx.print("hello " + str(1))
    assert capsys.readouterr().out == "hello 1\n"


SCRIPT_SEND_AND_EXIT = """
import sys
from bgtransfer import voltmx
r = voltmx.net.HttpRequest({"sessionIdentifier": "com.example.relaunch"})
r.backgroundTransfer = True
r.open(voltmx.constants.HTTP_METHOD_GET, sys.argv[1])
r.send()
print(r.task.id)
"""

SCRIPT_LATER = """
import json, os
from bgtransfer import voltmx
s = voltmx.net.BackgroundSession("com.example.relaunch")
done = s.getCompletedRequests()
out = []
for r in done:
    r.wait(30)
    out.append([r.task.id, r.readyState, r.status, os.path.getsize(r.responseFile),
                r.getTaskState().name])
    r.acknowledge()
print(json.dumps(out))
print(len(s.getCompletedRequests()))
"""


def run(code: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BGTRANSFER_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_script_exits_after_send_and_a_later_script_learns_the_outcome(
    server: FaultServer, home: Path, key: str
) -> None:
    url = server.url(f"/gen/300000?rate=300000&key={key}")
    first = run(SCRIPT_SEND_AND_EXIT, url, home=home)
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    deadline = time.monotonic() + 30
    lines: list[str] = ["[]"]
    while time.monotonic() < deadline:
        later = run(SCRIPT_LATER, home=home)
        assert later.returncode == 0, later.stderr
        lines = later.stdout.splitlines()
        if json.loads(lines[0]):
            break
        time.sleep(0.3)
    assert json.loads(lines[0]) == [[task_id, 4, 200, 300000, "COMPLETED"]]
    assert lines[1] == "0"  # acknowledged: not reported again


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "background_download.py",
            [
                "request.getSession() : BackgroundSession(com.bgtransfer.voltmx)",
                "request.readyState : 4",
                "request.status : 200",
                "request.statusText : OK",
                "request.response : iPhone App Programming Guide",
                "content-length: ",
            ],
        ),
        ("suspend.py", ["task state : SUSPENDED"]),
        (
            "resume.py",
            [
                "task state : SUSPENDED",
                "task state : RUNNING",
                "task state : COMPLETED",
                "status : 200 OK",
            ],
        ),
        (
            "task_state.py",
            [
                "tastState == constants.SESSION_TASK_STATE_RUNNING",
                "tastState == constants.SESSION_TASK_STATE_SUSPENDED",
                "tastState == constants.SESSION_TASK_STATE_COMPLETED",
            ],
        ),
    ],
)
def test_seed_examples(
    server: FaultServer, home: Path, key: str, example: str, expected: list[str]
) -> None:
    url = server.add(f"guide-{key}.txt", b"iPhone App Programming Guide\n" * 3000) + "?rate=100000"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BGTRANSFER_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / example), url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    pos = 0
    for needle in expected:
        found = out.stdout.find(needle, pos)
        assert found >= 0, f"{needle!r} not printed in order:\n{out.stdout}"
        pos = found
