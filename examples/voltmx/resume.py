"""The seed's resume example: suspend, then resume; the download continues where it was.

Run: python examples/voltmx/resume.py [URL]
"""

from _server import example_url

from bgtransfer import voltmx

constants = voltmx.constants
logPrefix = "bg_transfer_resume :- "

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

# resume task
request.resume()
voltmx.print(logPrefix + "task state : " + request.getTaskState().name)

request.wait()  # Python only: stay until DONE to show the outcome
voltmx.print(logPrefix + "task state : " + request.getTaskState().name)
voltmx.print(logPrefix + "status : " + str(request.status) + " " + request.statusText)
