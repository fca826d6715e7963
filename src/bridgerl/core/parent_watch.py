"""A command stops when whoever started it dies (a killed `dvc repro`, a killed launcher) instead of
running on unseen.

On Linux: prctl(PR_SET_PDEATHSIG, SIGTERM) for the direct parent, and a daemon thread that polls the
process that started the command (the parent or, when the parent is the `sh -c` through which DVC
and most launchers run commands, the shell's parent, whose death the shell does not pass on) and
sends this process SIGTERM when it is gone. SIGTERM unwinds like Ctrl-C (temporary outputs removed,
locks released); the message says why on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "busybox"}
_why: list[str] = []


def _stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, ppid, start time) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.find("(") + 1: s.rfind(")")]
    rest = s[s.rfind(")") + 2:].split()
    return comm, rest[0], int(rest[1]), int(rest[19])


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[3] == start and st[1] not in ("Z", "X")


def starter() -> tuple[int, int, str] | None:
    """(pid, start time, name) of the process whose death should stop this one, or None."""
    ppid = os.getppid()
    st = _stat(ppid)
    if st is None:
        return None
    target, tst = ppid, st
    if st[0] in SHELLS:  # `sh -c "bridgerl ..."`: the shell waits on us, watch who started the shell
        gst = _stat(st[2])
        if gst is not None and st[2] > 1:
            target, tst = st[2], gst
    if target <= 1:
        return None
    return target, tst[3], tst[0]


def why() -> str | None:
    """Why this process was asked to stop, when it was its starter's death."""
    return _why[0] if _why else None


def install(command: str, interval_s: float = 1.0) -> None:
    """Stop this process (SIGTERM to itself) when its starter dies. No-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    who = starter()
    if who is None:
        return
    pid, start, name = who

    def watch():
        while _alive(pid, start):
            time.sleep(interval_s)
        _why.append(f"the process that started it ({name}, pid {pid}) exited")
        print(f"bridgerl {command}: {_why[0]}; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(120)  # cleanup did not finish in time (stuck in native code): end hard
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="bridgerl-parent-watch", daemon=True).start()
