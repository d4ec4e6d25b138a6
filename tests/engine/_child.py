"""A foreground session in its own process, for the SIGKILL tests: resume or start, then wait."""

import sys

import bgtransfer

home, url, dest = sys.argv[1:4]
segments = int(sys.argv[4]) if len(sys.argv) > 4 else 1
with bgtransfer.Session("kill", home=home, background=False) as s:
    tasks = s.tasks()
    if tasks:
        task = tasks[0]
        if task.state is bgtransfer.TaskState.SUSPENDED:
            task.resume()
    else:
        task = s.download(url, dest, retry_wait=0.05, max_retry_wait=0.2, segments=segments)
    print("started", task.id, flush=True)
    task.wait(timeout=120)
    print("done", task.state.value, task.error, flush=True)
