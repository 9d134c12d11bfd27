"""The lifeline: a small process outside the agent that keeps a frozen agent
from hanging the host.

A fanotify permission event blocks the calling process until the group's
owner answers.  The watchdog thread covers a stuck responder, and the kernel
answers everything when the agent dies; but an agent that is stopped whole
(SIGSTOP, a frozen cgroup, a debugger) runs neither thread, and every exec on
the machine would wait.  The watchdog thread beats into a pipe; when the beats
stop for ``timeout`` seconds, the lifeline SIGKILLs the agent, which closes
the fanotify group, and the kernel lets every pending call through.  When the
agent exits, the pipe closes and the lifeline exits too.

    python -S kmod/_lifeline.py FD PID TIMEOUT

It runs as a script with the standard library only, so that it starts fast
and depends on nothing that could fail to import.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time


class Lifeline:
    """The agent's end: ``beat()`` from a thread that runs only if the process runs."""

    def __init__(self, timeout: float) -> None:
        self.lost = False
        r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", os.path.abspath(__file__), str(r), str(os.getpid()), f"{timeout:g}"],
                pass_fds=(r,), stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            os.close(r)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def beat(self) -> None:
        try:
            os.write(self._w, b".")
        except BlockingIOError:
            pass  # the pipe is full of beats: the lifeline is the one behind
        except BrokenPipeError:
            if not self.lost:
                self.lost = True
                print(f"immune lifeline: pid {self.pid} is gone; a frozen agent would hang execs",
                      file=sys.stderr)

    def close(self) -> None:
        os.close(self._w)
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(fd: int, agent: int, timeout: float) -> int:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    last = time.monotonic()
    while True:
        if poller.poll(max(1, int((last + timeout - time.monotonic()) * 1000))):
            if not os.read(fd, 4096):
                return 0  # the agent is gone: nothing to guard
            last = time.monotonic()
        elif time.monotonic() - last >= timeout:
            print(f"immune lifeline: agent pid {agent} has not run for {timeout:g}s (stopped or frozen); "
                  "killing it so that the kernel lets pending execs and opens through", file=sys.stderr)
            try:
                os.kill(agent, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
