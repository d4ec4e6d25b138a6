"""send(data) in the foreground and the background: bodies, FormData, upload events, answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote

import pytest

from bgtransfer import InvalidRequest, Session
from bgtransfer import voltmx as vx
from bgtransfer.testing import FaultServer, gen_bytes
from bgtransfer.voltmx import _sessions
from bgtransfer.voltmx.net import ProgressEvent
from tests.daemon.conftest import kill_daemon, kill_every_daemon

constants = vx.constants


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    monkeypatch.setenv("BGTRANSFER_HOME", str(h))
    yield h
    _sessions.close_sessions()
    kill_every_daemon(h)


@pytest.fixture(params=[False, True], ids=["foreground", "background"])
def background(request: pytest.FixtureRequest, home: Path) -> bool:
    return bool(request.param)


def post(
    background: bool, url: str, data: object, *, method: str = "POST", **headers: str
) -> vx.net.HttpRequest:
    r = vx.net.HttpRequest()
    r.backgroundTransfer = background
    r.open(method, url)
    for k, v in headers.items():
        r.setRequestHeader(k.replace("_", "-"), v)
    r.send(data)
    return r.wait(timeout=30)


def received(server: FaultServer, path: str) -> dict[str, str]:
    return server.requests(path)[-1].headers


def spooled(home: Path) -> list[str]:
    found = []
    for _root, _, files in os.walk(home / "voltmx"):
        found += [f for f in files if f.endswith(".req")]
    return found


def test_post_json_object_is_sent_as_json(server: FaultServer, background: bool, key: str) -> None:
    data = {"userId": "test", "password": "test123"}
    r = post(background, server.url(f"/upload/login-{key}"), data)
    assert r.status == 200
    assert json.loads(server.uploads[f"login-{key}"]) == data
    assert received(server, f"/upload/login-{key}")["content-type"] == "application/json"
    assert r.responseType == constants.HTTP_RESPONSE_TYPE_JSON
    assert isinstance(r.response, dict)
    assert r.response["size"] == len(server.uploads[f"login-{key}"])
    assert spooled(Path(os.environ["BGTRANSFER_HOME"])) == []  # the spooled body is gone


def test_post_a_json_string_with_the_apps_content_type(
    server: FaultServer, background: bool, key: str
) -> None:
    text = '{"userId":"test","password":"test123"}'
    r = post(background, server.url(f"/upload/s-{key}"), text, Content_Type="application/json")
    assert server.uploads[f"s-{key}"] == text.encode()
    assert received(server, f"/upload/s-{key}")["content-type"] == "application/json"
    assert r.status == 200


def test_put_bytes_and_a_list(server: FaultServer, background: bool, key: str) -> None:
    raw = bytes(range(256)) * 10
    r = post(background, server.url(f"/upload/raw-{key}"), raw, method="PUT")
    assert r.status == 201
    assert server.uploads[f"raw-{key}"] == raw
    assert received(server, f"/upload/raw-{key}")["content-type"] == "application/octet-stream"
    post(background, server.url(f"/upload/list-{key}"), [1, "two", None])
    assert json.loads(server.uploads[f"list-{key}"]) == [1, "two", None]


def test_data_is_ignored_for_get_and_head(server: FaultServer, home: Path, key: str) -> None:
    r = post(False, server.url(f"/echo?key={key}"), "ignored", method="GET")
    assert isinstance(r.response, dict)
    assert r.response["body_length"] == 0
    r = post(False, server.url(f"/echo?key={key}"), "ignored", method="HEAD")
    assert r.status == 200
    assert server.requests("/echo")[-1].method == "HEAD"
    assert r.responseText == ""


def test_post_formdata_of_strings_is_url_encoded(
    server: FaultServer, background: bool, key: str
) -> None:
    form = vx.net.FormData()
    form.append("appID", "demo app")
    form.append("tags", "a&b")
    form.append("tags", "c")
    post(background, server.url(f"/upload/form-{key}"), form)
    assert received(server, f"/upload/form-{key}")["content-type"] == (
        "application/x-www-form-urlencoded"
    )
    assert parse_qsl(server.uploads[f"form-{key}"].decode()) == [
        ("appID", "demo app"),
        ("tags", "a&b"),
        ("tags", "c"),
    ]


def test_post_formdata_with_a_file_and_raw_bytes_is_multipart(
    server: FaultServer, background: bool, key: str, tmp_path: Path
) -> None:
    image = tmp_path / "SampleImage.png"
    image.write_bytes(b"\x89PNG" + os.urandom(300_000))
    form = vx.net.FormData()
    form.append("album", "2026")
    form.append("picture", image)  # a path: streamed from the file
    form.append("notes.txt", b"raw bytes\r\n--not a boundary")  # RawBytes: name is the filename
    form.append('caf\u00e9 "q"', b"named", "r\u00e9sum\u00e9.pdf")  # UTF-8 names, escaped quotes
    with open(image, "rb") as f:
        form.append("again", f, "copy.png")
        r = post(background, server.url(f"/upload/mp-{key}"), form)
    assert r.status == 200
    ctype = received(server, f"/upload/mp-{key}")["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    assert server.upload_fields[f"mp-{key}"] == {"album": "2026"}
    assert server.uploads[f"mp-{key}/picture"] == image.read_bytes()
    assert server.uploads[f"mp-{key}/again"] == image.read_bytes()
    assert server.uploads[f"mp-{key}/notes.txt"] == b"raw bytes\r\n--not a boundary"
    assert server.uploads[f"mp-{key}/caf\u00e9 %22q%22"] == b"named"
    names = {p["field"]: p.get("filename") for p in r.response["parts"]}
    assert names == {
        "album": None,
        "picture": "SampleImage.png",
        "notes.txt": "notes.txt",
        "again": "copy.png",
        "caf\u00e9 %22q%22": "r\u00e9sum\u00e9.pdf",
    }


def test_the_whole_answer_of_an_upload_is_kept(
    server: FaultServer, background: bool, key: str
) -> None:
    size = 3 << 20  # far past the 64 KiB an upload's answer used to keep
    r = post(background, server.url(f"/echo?gen={size}&type=application/octet-stream&k={key}"), "x")
    assert r.responseType == constants.HTTP_RESPONSE_TYPE_RAWDATA
    assert r.response == gen_bytes(size)
    assert os.path.getsize(r.responseFile or "") == size
    text = post(
        background, server.url(f"/echo?gen=200K&type=text/plain&k={key}"), {"a": 1}
    ).responseText
    assert text == gen_bytes(200 << 10).decode("utf-8", "replace")


def test_session_upload_keeps_the_whole_answer_in_response_path(
    server: FaultServer, home: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    answer = tmp_path / "answer.bin"
    with Session("answers", home=str(home), background=False) as s:
        for bad in (tmp_path / "no-such-dir" / "a.bin", 42):
            with pytest.raises(InvalidRequest, match="response_path"):
                s.upload(src, server.url("/echo"), response_path=bad)  # type: ignore[arg-type]
        t = s.upload(src, server.url("/echo?gen=1M"), method="POST", response_path=answer).wait(
            timeout=30
        )
    assert t.error is None
    assert answer.read_bytes() == gen_bytes(1 << 20)
    assert t.response_body == gen_bytes(1 << 20)[: 64 << 10]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".bgtransfer-part")]


def test_upload_events(server: FaultServer, background: bool, key: str) -> None:
    events: list[ProgressEvent] = []
    r = vx.net.HttpRequest()
    r.backgroundTransfer = background
    for kind in ("loadstart", "progress", "load", "error", "abort", "timeout", "loadend"):
        r.upload.addEventListener(kind, events.append)
    r.open(constants.HTTP_METHOD_POST, server.url(f"/upload/ev-{key}"))
    body = os.urandom(5 << 20)
    r.send(body)
    r.wait(timeout=60)
    kinds = [e.type for e in events]
    assert kinds[0] == "loadstart"
    assert kinds[-2:] == ["load", "loadend"]
    assert set(kinds[1:-2]) == {"progress"}
    assert all(e.lengthComputable and e.total == len(body) for e in events)
    loaded = [e.loaded for e in events]
    assert loaded == sorted(loaded)
    assert loaded[0] == 0
    assert loaded[-1] == len(body)
    assert events[-1].target is r.upload


def test_upload_error_and_abort_events(server: FaultServer, home: Path, key: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kinds: list[str] = []
    r = vx.net.HttpRequest()
    r.upload.addEventListener("error", lambda e: kinds.append(e.type))
    r.upload.addEventListener("loadend", lambda e: kinds.append(e.type))
    r.open(constants.HTTP_METHOD_POST, f"http://127.0.0.1:{port}/up")
    r.send("data")
    r.wait(timeout=30)
    assert kinds == ["error", "loadend"]
    assert r.status == 410
    kinds.clear()
    r2 = vx.net.HttpRequest()
    for kind in ("abort", "loadend", "load"):
        r2.upload.addEventListener(kind, lambda e: kinds.append(e.type))
    r2.open(constants.HTTP_METHOD_POST, server.url(f"/upload/ab-{key}?stall=5"))
    r2.send("data")
    time.sleep(0.3)
    r2.abort()
    assert kinds == ["abort", "loadend"]


def test_a_background_post_is_not_blindly_sent_again(
    server: FaultServer, home: Path, key: str
) -> None:
    # The server takes 1000 bytes and hangs up: a POST may have been acted on.
    url = server.url(f"/upload/once-{key}?cut=1000&times=1")
    r = post(True, url, os.urandom(100_000))
    assert r.status == 410
    assert "not retried" in r.statusText
    assert len(server.requests(f"/upload/once-{key}")) == 1
    # With an Idempotency-Key the app says a second send is safe: retried, then done.
    url2 = server.url(f"/upload/twice-{key}?cut=1000&times=1")
    body = os.urandom(100_000)
    r2 = post(True, url2, body, Idempotency_Key=f"k-{key}")
    assert r2.status == 200
    assert len(server.requests(f"/upload/twice-{key}")) == 2
    assert server.uploads[f"twice-{key}"] == body


SCRIPT_POST_AND_EXIT = """
import sys
from bgtransfer import voltmx
form = voltmx.net.FormData()
form.append("report", sys.argv[2].encode())
r = voltmx.net.HttpRequest("com.example.reports")
r.open(voltmx.constants.HTTP_METHOD_POST, sys.argv[1])
r.setRequestHeader("Idempotency-Key", "report-1")
r.send(form)
print(r.task.id)
"""

SCRIPT_READ_LATER = """
import json
from bgtransfer import voltmx
out = []
for r in voltmx.net.BackgroundSession("com.example.reports").getCompletedRequests():
    r.wait(30)
    out.append([r.task.id, r.status, r.responseType, [p["field"] for p in r.response["parts"]]])
    r.acknowledge()
print(json.dumps(out))
"""


def test_a_background_post_survives_the_callers_exit_and_a_daemon_kill(
    server: FaultServer, home: Path, key: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BGTRANSFER_HOME": str(home)}
    payload = "quarterly figures " * 1000
    # The server waits 4 s before answering: the daemon is killed while the POST is open.
    url = server.url(f"/upload/report-{key}?stall=4&times=1")
    first = subprocess.run(
        [sys.executable, "-c", SCRIPT_POST_AND_EXIT, url, payload],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    deadline = time.monotonic() + 10
    while not server.requests(f"/upload/report-{key}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert kill_daemon(home) is not None
    assert spooled(home)  # the body waits in the home for the restarted daemon
    out: list[list[object]] = []
    deadline = time.monotonic() + 40
    while not out and time.monotonic() < deadline:
        later = subprocess.run(
            [sys.executable, "-c", SCRIPT_READ_LATER], capture_output=True, text=True,
            timeout=60, env=env,
        )  # fmt: skip
        assert later.returncode == 0, later.stderr
        out = json.loads(later.stdout)
        time.sleep(0.2)
    assert out == [[task_id, 200, "json", ["report"]]]
    assert len(server.requests(f"/upload/report-{key}")) == 2  # sent again after the kill
    assert server.uploads[f"report-{key}/report"] == payload.encode()
    assert spooled(home) == []


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        (
            "post_json_string.py",
            ['payload : {"ksid":4711,', "status : 200 OK", "responseType : json", "stored bytes"],
        ),
        (
            "post_formdata.py",
            ["in status 200", "bot got ", "uploaded SampleImage.png : 1008 bytes"],
        ),
        (
            "background_get_responsetext.py",
            ["session : com.bgtransfer.voltmx", "screenshot 0 : iVBORyBzY3JlZW5zaG90"],
        ),
    ],
)
def test_examples_ported_from_app_code(
    server: FaultServer, home: Path, example: str, expected: list[str]
) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "voltmx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "BGTRANSFER_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, str(examples / example), server.base_url],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    pos = 0
    for needle in expected:
        found = out.stdout.find(needle, pos)
        assert found >= 0, f"{needle!r} not printed in order:\n{out.stdout}"
        pos = found


def test_redirects_of_requests_with_a_body_are_followed(
    server: FaultServer, background: bool, key: str
) -> None:
    events: list[str] = []
    states: list[int] = []
    r = vx.net.HttpRequest()
    r.backgroundTransfer = background
    r.onReadyStateChange = lambda req: states.append(req.readyState)
    for kind in ("loadstart", "load", "loadend"):
        r.upload.addEventListener(kind, lambda e: events.append(e.type))
    target = quote(server.url(f"/echo?k={key}"), safe="")
    r.open(constants.HTTP_METHOD_POST, server.url(f"/redirect?to={target}&code=303"))
    r.send({"a": 1})
    r.wait(timeout=30)
    assert (r.status, r.response["method"], r.response["body_length"]) == (200, "GET", 0)
    assert states == [1, 2, 3, 4]  # the redirect itself fires nothing
    assert events == ["loadstart", "load", "loadend"]
    # 307: the same method and body go to the new place.
    target = quote(server.url(f"/upload/moved-{key}"), safe="")
    r2 = post(background, server.url(f"/redirect?to={target}&code=307"), b"the body")
    assert r2.status == 200
    assert server.uploads[f"moved-{key}"] == b"the body"
    assert server.requests(f"/upload/moved-{key}")[-1].method == "POST"


def test_credentials_do_not_follow_a_redirect_to_another_origin(
    server: FaultServer, home: Path, key: str
) -> None:
    assert server.other_base_url is not None
    same = quote(server.url(f"/echo?k={key}"), safe="")
    r = post(False, server.url(f"/redirect?to={same}&code=307"), "x", Authorization="Bearer t")
    assert r.response["headers"].get("authorization") == "Bearer t"
    other = quote(server.other_base_url + f"/echo?k={key}", safe="")
    r = post(False, server.url(f"/redirect?to={other}&code=307"), "x", Authorization="Bearer t")
    assert r.status == 200
    assert "authorization" not in r.response["headers"]
