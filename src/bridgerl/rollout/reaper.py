"""Engine processes die with the process that started them.

vLLM's engine core runs in a process of its own (its workers watch the engine core, but the engine core does
not watch its client): when a training process is SIGKILLed (OOM killer, a killed pod container, `kill -9`),
the engine core and its workers would live on, holding memory and cores. `Reaper` is a small watchdog
process started next to the engine: it polls its parent and, once the parent is gone, SIGKILLs the engine's
processes and their descendants. An orderly `close()` stops the reaper first.

    python src/bridgerl/rollout/reaper.py PARENT_PID PID [PID ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5


class Reaper:
    def __init__(self, pids: list[int]):
        self.pids = list(pids)
        # run as a script: no package import (torch) in a watchdog
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid()),
                                      *map(str, self.pids)], stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def new_children(before: set[int]) -> list[int]:
    """This process's descendants that were not in `before` (pids)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]


def children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill_tree(pids: list[int]) -> None:
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str]) -> int:
    parent, pids = int(argv[0]), [int(a) for a in argv[1:]]
    while True:
        try:
            os.kill(parent, 0)
            gone = os.getppid() != parent
        except ProcessLookupError:
            gone = True
        if gone:
            _kill_tree(pids)
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
