"""POST a JSON string, ported from a Volt MX app's audience subscription call.

The JavaScript (a KMS push-subscription form, and the docs' "Sending a JSON Object and String
data as a Request"): the payload is built as a JSON *string*, sent with
``Content-Type: application/json``, and the callback reads ``readyState``, ``status`` and the
typed ``response``.

Run: python examples/voltmx/post_json_string.py [BASE_URL]
"""

from urllib.parse import quote

from _server import base_url

from bgtransfer import voltmx

constants = voltmx.constants
BASE = base_url()

ksid, audienceFirstName, audienceLastName = 4711, "Ada", "Lovelace"
audienceEmail, audienceStatus = "ada@example.com", "true"


def onReadyStateChange(httpclient1):
    if httpclient1.readyState == constants.HTTP_READY_STATE_DONE:
        voltmx.print("status : " + str(httpclient1.status) + " " + httpclient1.statusText)
        voltmx.print("responseType : " + httpclient1.responseType)
        response = httpclient1.response  # a parsed JSON object: responseType is JSON
        voltmx.print("stored bytes : " + str(response["size"]))


httpclient1 = voltmx.net.HttpRequest()
httpclient1.onReadyStateChange = onReadyStateChange
httpclient1.timeout = 0
requestMethod = constants.HTTP_METHOD_POST
url = BASE + "/upload/" + quote("subscribeaudience")
httpclient1.open(requestMethod, url, True)
httpclient1.setRequestHeader("Content-Type", "application/json")
payload1 = (
    "{"
    + '"ksid":' + str(ksid) + ","
    + '"firstName" :' + '"' + audienceFirstName + '",'
    + '"lastName" :' + '"' + audienceLastName + '",'
    + '"email" : ' + '"' + audienceEmail + '",'
    + '"active" :' + audienceStatus
    + "}"
)  # fmt: skip
voltmx.print("payload : " + payload1)
httpclient1.send(payload1)
httpclient1.wait()  # Python only: a script has no event loop keeping it alive
