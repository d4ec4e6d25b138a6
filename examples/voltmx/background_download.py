"""The seed's first example, line by line: a background download with callbackHandler.

Run: python examples/voltmx/background_download.py [URL]
"""

from _server import example_url

from bgtransfer import voltmx

constants = voltmx.constants
URL = example_url()  # the seed downloads Apple's programming guide PDF

logPrefix = "bg_transfer_test_case_1 :- "


def send_request():
    global request
    request = voltmx.net.HttpRequest()
    request.onReadyStateChange = callbackHandler

    # BGtransfer
    request.backgroundTransfer = True

    # session
    req_session = request.getSession()
    voltmx.print(logPrefix + " request.getSession() : " + req_session)
    # url
    url = URL
    voltmx.print(logPrefix + "URL : " + url)
    request.open(constants.HTTP_METHOD_GET, url)
    request.send()


def callbackHandler(request):
    voltmx.print(logPrefix + " : " + "+" * 92)
    voltmx.print(logPrefix + " : Scope :- request.readyState : " + str(request.readyState))
    voltmx.print(logPrefix + " : Scope :- request.status : " + str(request.status))
    voltmx.print(logPrefix + " : Scope :- request.statusText : " + request.statusText)
    voltmx.print(logPrefix + " : Scope :- request.responseType : " + request.responseType)
    voltmx.print(logPrefix + " : Scope :- request.response : " + str(request.response)[:60])
    voltmx.print(logPrefix + " : Scope :- request.getAllResponseHeaders() : ")
    voltmx.print(request.getAllResponseHeaders())
    voltmx.print(logPrefix + " : " + "+" * 92)


send_request()
request.wait()  # Python only: a JavaScript app's event loop keeps it alive for the callbacks
