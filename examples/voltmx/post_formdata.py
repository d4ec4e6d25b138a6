"""POST a FormData, ported from a Volt MX banking app's chat bot call, plus the docs' upload.

The JavaScript (ChatBotManager.predict): a ``kony.net.FormData`` of strings posted with
``Content-Type: application/x-www-form-urlencoded`` and a 10 s timeout; the callback reads
``readyState`` and ``status`` through ``Number(x.toString())`` and passes ``this.response`` on.
Then the docs' "Uploading a File": ``frmData.append(f1.name, f1.read())`` sends a file's raw
bytes as multipart/form-data.

Run: python examples/voltmx/post_formdata.py [BASE_URL]
"""

import os
import tempfile

from _server import base_url

from bgtransfer import kony

constants = kony.constants
BASE = base_url()


def predict(str_, callback):
    httpClient = kony.net.HttpRequest()
    httpClient.timeout = 10000

    def onReadyStateChanged(this):
        readyState = int(str(this.readyState))
        status = int(str(this.status))
        if readyState == 4:
            kony.print("in ready state 4")
            if status == 200:
                kony.print("in status 200")
                callback(this.response)
            else:
                callback({"reply": ["unable to connect to server please try again later!"]})

    httpClient.onReadyStateChange = onReadyStateChanged
    httpClient.open(constants.HTTP_METHOD_POST, BASE + "/upload/bot")
    httpClient.setRequestHeader("Content-Type", "application/x-www-form-urlencoded")
    postdata = kony.net.FormData()
    postdata.append("message", str_)
    postdata.append("auth_token", "claims-token")
    postdata.append("session_token", "session-token")
    httpClient.send(postdata)
    return httpClient


def show(response):
    kony.print("bot got " + str(response["size"]) + " bytes")


first = predict("where is the nearest ATM?", show)
second = predict("hello", show)
first.wait()  # Python only: a script has no event loop keeping it alive
second.wait()

# The docs' file upload: the file's raw bytes under its name, as multipart/form-data.
path = os.path.join(tempfile.mkdtemp(), "SampleImage.png")
with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + bytes(1000))
httpclient = kony.net.HttpRequest()
httpclient.open(constants.HTTP_METHOD_POST, BASE + "/upload/images")
frmData = kony.net.FormData()
with open(path, "rb") as f1:
    frmData.append(os.path.basename(path), f1.read())
httpclient.send(frmData)
httpclient.wait()
parts = httpclient.response["parts"]
kony.print("uploaded " + parts[0]["filename"] + " : " + str(parts[0]["size"]) + " bytes")
