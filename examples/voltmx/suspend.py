"""The seed's suspend example: suspend a background download right after send().

Run: python examples/voltmx/suspend.py [URL]
"""

from _server import example_url

from bgtransfer import voltmx

constants = voltmx.constants
logPrefix = "bg_transfer_suspend :- "

request = voltmx.net.HttpRequest()

# BGtransfer
request.backgroundTransfer = True

# url
url = example_url()
voltmx.print(logPrefix + "URL : " + url)

request.open(constants.HTTP_METHOD_GET, url)
request.send()

# suspend task
request.suspend()

voltmx.print(logPrefix + "task state : " + request.getTaskState().name)
request.task.cancel()  # Python only: leave no suspended task behind in the daemon
