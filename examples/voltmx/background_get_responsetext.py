"""A background GET that reads responseText, ported from a Volt MX app store's screenshot loader.

The JavaScript (an enterprise app store form): ``backgroundTransfer = true`` on iPad, an
``X-Voltmx-Authorization`` header, and a callback that, at readyState 4, checks the status and
parses the body (``JSON.parse`` of the text, as the app does when ``response`` is a string).

Run: python examples/voltmx/background_get_responsetext.py [BASE_URL]
"""

import base64
import json
from urllib.parse import quote

from _server import base_url

from bgtransfer import voltmx

constants = voltmx.constants
BASE = base_url()
SCREENSHOT = json.dumps({"data": base64.b64encode(b"\x89PNG screenshot").decode()})


class Scope:
    xhr = None
    index = 0


scope = Scope()


def getScreenshotCallback(xhr):
    if scope.xhr.readyState == 4:
        if scope.xhr.status == 200 or scope.xhr.status == 0:
            resp = json.loads(scope.xhr.responseText)
            voltmx.print("screenshot " + str(scope.index) + " : " + resp["data"])
        else:
            voltmx.print("Failed to download app icon : " + str(scope.xhr.status))


def getScreenshots():
    scope.xhr = voltmx.net.HttpRequest()
    scope.xhr.backgroundTransfer = True  # the app sets it on iPad
    url = BASE + "/echo?type=application/json&body=" + quote(SCREENSHOT)
    scope.xhr.open(constants.HTTP_METHOD_GET, url)
    scope.xhr.setRequestHeader("X-Voltmx-Authorization", "claims-token")
    scope.xhr.onReadyStateChange = getScreenshotCallback
    scope.xhr.send()
    voltmx.print("session : " + scope.xhr.getSession())


getScreenshots()
scope.xhr.wait()  # Python only: a script has no event loop keeping it alive
