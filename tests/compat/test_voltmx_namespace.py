"""voltmx.net's namespace: FormData, cookies, integrity, isNetworkAvailable, cancel; kony.*."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgtransfer import voltmx as vx
from bgtransfer.testing import FaultServer
from bgtransfer.voltmx import _sessions
from bgtransfer.voltmx.net import VoltMXError
from tests.daemon.conftest import kill_every_daemon

constants = vx.constants


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    h = tmp_path / "home"
    h.mkdir(mode=0o700)
    monkeypatch.setenv("BGTRANSFER_HOME", str(h))
    yield h
    vx.net.removeIntegrityCheck()
    _sessions.close_sessions()
    kill_every_daemon(h)


def get(url: str, *, background: bool = False, data: object = None) -> vx.net.HttpRequest:
    r = vx.net.HttpRequest()
    r.backgroundTransfer = background
    r.open(constants.HTTP_METHOD_GET if data is None else constants.HTTP_METHOD_POST, url)
    r.send(data)
    return r.wait(timeout=30)


# -- FormData ---------------------------------------------------------------------------------


def test_formdata_members(tmp_path: Path) -> None:
    f = vx.net.FormData()
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"jpg")
    stream = io.BytesIO(b"stream")
    f.append("a", "1")
    f.append("b", b"\x00\x01")
    f.append("a", "2")
    f.append("photo", photo)
    f.append("s", stream, "s.bin")
    assert f.keys() == ["a", "b", "a", "photo", "s"]
    assert f.values() == ["1", b"\x00\x01", "2", photo, stream]
    assert f.entries() == [("a", "1"), ("b", b"\x00\x01"), ("a", "2"), ("photo", photo),
                           ("s", stream)]  # fmt: skip
    assert f.getAll("a") == ["1", "2"]
    assert f.toString() == "a=1&a=2"
    assert f.get("a") == "1"
    assert f.get("none") is None
    assert f.has("b")
    f.delete("a")
    assert f.keys() == ["b", "photo", "s"]
    f.set("b", "replaced")
    assert f.getAll("b") == ["replaced"]
    assert len(f) == 3


def test_formdata_bad_input() -> None:
    f = vx.net.FormData()
    with pytest.raises(VoltMXError) as info:
        f.append("only-a-name")
    assert info.value.errorCode == 101
    for name, value in ((1, "x"), ("n", 3.5), ("n", {"a": 1})):
        with pytest.raises(VoltMXError) as info:
            f.append(name, value)  # type: ignore[arg-type]
        assert info.value.errorCode == 100
    with pytest.raises(VoltMXError, match="no such file"):
        f.append("f", Path("/nonexistent/file.bin"))
    assert len(f) == 0


# -- cookies ----------------------------------------------------------------------------------


def test_cookies_are_stored_sent_listed_and_cleared(server: FaultServer, home: Path) -> None:
    assert vx.net.getCookies(server.url("/")) is None
    get(server.url("/echo?set_cookie=sid%3Dabc%3B%20Path%3D%2F"))
    get(server.url("/echo?set_cookie=theme%3Ddark%3B%20Path%3D%2F"), background=True)
    strings = vx.net.getCookies(server.url("/"), constants.COOKIES_IN_STRING)
    assert sorted(s.split(";")[0] for s in strings) == ["sid=abc", "theme=dark"]
    as_json = vx.net.getCookies(server.url("/"), constants.COOKIES_IN_JSON)
    assert {c["Name"]: c["Value"] for c in as_json} == {"sid": "abc", "theme": "dark"}
    r = get(server.url("/echo"))  # the store's cookies ride along, in either mode
    assert sorted(r.response["headers"]["cookie"].split("; ")) == ["sid=abc", "theme=dark"]
    vx.net.clearCookies(server.url("/"), ["theme"])
    assert [s.split(";")[0] for s in vx.net.getCookies(server.url("/"))] == ["sid=abc"]
    vx.net.clearCookies(server.url("/"))
    assert vx.net.getCookies(server.url("/")) is None
    assert "cookie" not in get(server.url("/echo")).response["headers"]


def test_set_cookies_adds_to_the_store(server: FaultServer, home: Path) -> None:
    vx.net.setCookies(
        server.url("/"),
        [{"Name": "appName", "Value": "App01", "Domain": "127.0.0.1", "Path": "/"}],
    )
    assert vx.net.getCookies(server.url("/x")) == ["appName=App01; Domain=127.0.0.1; Path=/"]
    vx.net.setCookies(
        server.url("/"),
        [{"Name": "appName", "Value": "App02", "Domain": "127.0.0.1", "Path": "/"}],
    )  # same name, domain and path: replaced
    assert [c["Value"] for c in vx.net.getCookies(server.url("/"), "json")] == ["App02"]
    assert get(server.url("/echo")).response["headers"]["cookie"] == "appName=App02"
    for bad in (
        [{"Name": "n"}],
        "not a list",
        [{"Name": "n", "Value": "v", "Domain": "d", "Path": "/", "ExpiresDate": "soon"}],
    ):
        with pytest.raises(VoltMXError) as info:
            vx.net.setCookies(server.url("/"), bad)
        assert info.value.errorCode == 100


def test_cookie_functions_bad_input(home: Path) -> None:
    assert vx.net.getCookies("not a url") is None
    with pytest.raises(VoltMXError) as info:
        vx.net.clearCookies("notaurl")
    assert info.value.errorCode == 1005
    with pytest.raises(VoltMXError) as info:
        vx.net.getCookies()
    assert info.value.errorCode == 101
    with pytest.raises(VoltMXError) as info:
        vx.net.getCookies("http://127.0.0.1/", "xml")
    assert info.value.errorCode == 100


# -- integrity --------------------------------------------------------------------------------

PARAMS = {"algo": "SHA256", "salt": "secret_123", "headerName": "X-Checksum", "validateResp": True}


def test_integrity_check_signs_requests_and_validates_responses(
    server: FaultServer, home: Path, key: str
) -> None:
    r = get(server.url(f"/echo?body=hi&digest=1&k={key}"))
    assert r.integrityStatus == constants.HTTP_INTEGRITY_CHECK_NOT_DONE  # not enabled
    vx.net.setIntegrityCheck(PARAMS)
    ok = get(server.url(f"/echo?body=hello&digest=1&k={key}"), data="payload")
    assert ok.integrityStatus == constants.HTTP_INTEGRITY_CHECK_SUCCESSFUL
    sent = server.requests("/echo")[-1].headers["x-checksum"]
    assert sent == hashlib.sha256(b"secret_123payload").hexdigest()
    bad = get(server.url(f"/echo?body=hello&digest=wrong&k={key}"), background=True)
    assert bad.integrityStatus == constants.HTTP_INTEGRITY_CHECK_FAILED
    unsigned = get(server.url(f"/echo?body=hello&k={key}"))
    assert unsigned.integrityStatus == constants.HTTP_INTEGRITY_CHECK_FAILED
    off = vx.net.HttpRequest()
    off.disableIntegrityCheck = True
    off.open(constants.HTTP_METHOD_GET, server.url(f"/echo?body=x&digest=1&k={key}"))
    off.send()
    off.wait(timeout=30)
    assert off.integrityStatus == constants.HTTP_INTEGRITY_CHECK_NOT_DONE
    assert "x-checksum" not in server.requests("/echo")[-1].headers
    vx.net.removeIntegrityCheck()
    assert get(server.url(f"/echo?digest=1&k={key}")).integrityStatus == 0
    assert "x-checksum" not in server.requests("/echo")[-1].headers


def test_integrity_host_list_and_errors(server: FaultServer, home: Path, key: str) -> None:
    vx.net.setIntegrityCheck({**PARAMS, "hostNameList": ["*.example.com"]})
    r = get(server.url(f"/echo?digest=1&k={key}"))
    assert r.integrityStatus == constants.HTTP_INTEGRITY_CHECK_NOT_DONE  # 127.0.0.1 not listed
    assert "x-checksum" not in server.requests("/echo")[-1].headers
    for table, code in (
        ("not a table", 100),
        ({**PARAMS, "algo": "CRC32"}, 100),
        ({**PARAMS, "colour": "red"}, 100),
        ({**PARAMS, "hostNameList": ["bad host!"]}, 100),
        ({k: v for k, v in PARAMS.items() if k != "salt"}, 101),
    ):
        with pytest.raises(VoltMXError) as info:
            vx.net.setIntegrityCheck(table)
        assert info.value.errorCode == code
    with pytest.raises(VoltMXError) as info:
        vx.net.setIntegrityCheck()
    assert info.value.errorCode == 102
    assert vx.net.disableIntegrityCheck is vx.net.removeIntegrityCheck


# -- isNetworkAvailable, cancel -------------------------------------------------------------


def _default_route() -> bool:
    lines = Path("/proc/net/route").read_text().splitlines()[1:]
    return any(line.split()[1] == "00000000" for line in lines if line.split())


def test_is_network_available(home: Path) -> None:
    assert vx.net.isNetworkAvailable(constants.NETWORK_TYPE_ANY) is _default_route()
    assert vx.net.isNetworkAvailable(constants.NETWORK_TYPE_3G) is False
    with pytest.raises(VoltMXError) as info:
        vx.net.isNetworkAvailable()
    assert info.value.errorCode == 101
    with pytest.raises(VoltMXError) as info:
        vx.net.isNetworkAvailable("LTE")
    assert info.value.errorCode == 100


def test_is_network_available_is_false_without_a_route() -> None:
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rn", "true"]).returncode != 0:
        pytest.skip("needs unshare -rn (user and network namespaces)")
    code = "from bgtransfer import voltmx as v; print(v.net.isNetworkAvailable('ANY'))"
    out = subprocess.run(
        [unshare, "-rn", sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "False", out.stderr


def test_cancel_aborts_a_request_and_ignores_anything_else(server: FaultServer, home: Path) -> None:
    r = vx.net.HttpRequest()
    states: list[int] = []
    r.onReadyStateChange = lambda req: states.append(req.readyState)
    r.open(constants.HTTP_METHOD_GET, server.url("/gen/1000000?rate=100000"))
    r.send()
    time.sleep(0.2)
    vx.net.cancel(r)
    assert states[-1] == constants.HTTP_READY_STATE_DONE
    assert r.readyState == constants.HTTP_READY_STATE_UNSENT
    vx.net.cancel("not a handle")  # invalid parameters are ignored (docs)
    vx.net.cancel()


# -- kony -------------------------------------------------------------------------------------


def test_kony_is_the_same_api_under_the_old_name(server: FaultServer, home: Path) -> None:
    from bgtransfer import kony

    assert kony.net.HttpRequest is vx.net.HttpRequest
    assert kony.net.FormData is vx.net.FormData
    assert kony.constants is vx.constants
    assert kony.print is vx.print
    form = kony.net.FormData()
    form.append("k", "v")
    r = kony.net.HttpRequest()
    r.open(kony.constants.HTTP_METHOD_POST, server.url("/upload/kony"))
    r.send(form)
    r.wait(timeout=30)
    assert r.status == 200
    assert server.uploads["kony"] == b"k=v"
