"""The seed's getTaskState example.

Run: python examples/voltmx/task_state.py [URL]
"""

from _server import example_url

from bgtransfer import voltmx

constants = voltmx.constants
logPrefix = "bg_transfer_task_state :- "

request = voltmx.net.HttpRequest()

# BGtransfer
request.backgroundTransfer = True

# url
url = example_url()
voltmx.print(logPrefix + "URL : " + url)

request.open(constants.HTTP_METHOD_GET, url)
request.send()


def show_state(request_object):
    # getTaskStat()
    tastState = request_object.getTaskState()
    if tastState == constants.SESSION_TASK_STATE_RUNNING:
        voltmx.print("tastState == constants.SESSION_TASK_STATE_RUNNING")
    elif tastState == constants.SESSION_TASK_STATE_SUSPENDED:
        voltmx.print("tastState == constants.SESSION_TASK_STATE_SUSPENDED")
    elif tastState == constants.SESSION_TASK_STATE_CANCELING:
        voltmx.print("tastState == constants.SESSION_TASK_STATE_CANCELING")
    elif tastState == constants.SESSION_TASK_STATE_COMPLETED:
        voltmx.print("tastState == constants.SESSION_TASK_STATE_COMPLETED")


# Python only: walk the task through its states so that each branch shows up.
show_state(request)
request.suspend()
show_state(request)
request.resume()
request.wait()
show_state(request)
