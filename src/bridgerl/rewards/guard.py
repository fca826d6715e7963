"""A child process that runs answer verification, so that no expression can hang or crash the caller.

math-verify's own timeouts use `signal.alarm`, which works only in the main thread and cannot stop
work stuck in C code (a huge integer power, say). Here verification runs in one long-lived worker
process (`python -c ...serve(...)`, started lazily, restarted after a fork; talking JSON
lines over pipes, so the caller's main module is never re-imported). In the worker, each item gets
a wall-clock budget from an interval timer; if the worker does not answer within the budget plus a
grace period, the caller kills it, counts the item wrong, and the next call starts a new worker.
Callers in any thread are served (one request at a time, under a lock).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Callable

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0  # importing sympy/math-verify in a fresh process on a busy machine
GRACE_S = 2.0  # beyond the item budget before the worker is killed


class ItemTimeout(BaseException):
    """Raised when an item's budget is spent (a BaseException, so library code does not swallow it)."""


def _on_alarm(signum, frame):
    raise ItemTimeout()


def serve(fn_path: str) -> None:
    """Worker loop: read {"args", "timeout_s"} lines, answer {"result"[, "error"]} lines, until EOF.
    `fn_path` is 'package.module:function' or 'path/to/file.py:function' (`bridgerl.rewards.refs.load_ref`)."""
    from bridgerl.rewards.refs import load_ref

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    fn = load_ref(fn_path)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" notices: we time items here
    signal.signal(signal.SIGALRM, _on_alarm)
    proto.write('{"ready": true}\n')
    for line in sys.stdin:
        msg = json.loads(line)
        answer: dict = {}
        try:
            signal.setitimer(signal.ITIMER_REAL, msg["timeout_s"])
            answer["result"] = fn(*msg["args"])
        except ItemTimeout:
            answer = {"result": None, "error": f"timed out after {msg['timeout_s']:g}s"}
        except Exception as e:  # a malformed expression is a wrong answer, never a crash
            answer = {"result": False, "error": f"raised {type(e).__name__}: {e}"[:500]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            out = json.dumps(answer)
        except (TypeError, ValueError):
            out = json.dumps({"result": None, "error": f"returned {type(answer['result']).__name__}, not JSON"})
        proto.write(out + "\n")


_WORKER_MAIN = "import sys; from bridgerl.rewards.guard import serve; serve(sys.argv[1])"


class GuardedCall:
    """Run `module:function` (JSON-able arguments and result) in a worker process with a timeout."""

    def __init__(self, fn_path: str):
        self.fn_path = fn_path
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = None
        self.restarts = 0  # workers killed for overrunning or dying (diagnostics, tests)
        atexit.register(self.close)

    def _alive(self) -> bool:
        return self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None

    def _readline(self, timeout_s: float) -> bytes | None:
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        return self._proc.stdout.readline() if ready else None

    def _start(self) -> None:
        self._drop()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN, self.fn_path],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._pid = os.getpid()
        line = self._readline(STARTUP_TIMEOUT_S)
        if not line:
            self._drop(kill=True)
            raise RuntimeError(f"verification worker did not start within {STARTUP_TIMEOUT_S:.0f}s")

    def _drop(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or self._pid != os.getpid():  # a forked child never touches its parent's worker
            return
        if kill:
            proc.kill()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __call__(self, *args, timeout_s: float = 5.0):
        """fn(*args) in the worker; None when it ran out of time or the worker died."""
        return self.call(*args, timeout_s=timeout_s)[0]

    def call(self, *args, timeout_s: float = 5.0) -> tuple[object, str | None]:
        """(fn(*args), None), or (a placeholder, why there is no result): it raised, ran out of time, returned
        something that is not JSON, or the worker died or hung past the budget (then it is replaced)."""
        with self._lock:
            if not self._alive():
                self._start()
            try:
                self._proc.stdin.write((json.dumps({"args": list(args), "timeout_s": float(timeout_s)}) + "\n").encode())
                self._proc.stdin.flush()
                line = self._readline(timeout_s + GRACE_S)
                if line:
                    answer = json.loads(line)
                    return answer["result"], answer.get("error")
                why = f"timed out after {timeout_s:g}s (stuck, worker replaced)"
            except (OSError, ValueError) as e:  # the worker died (e.g. out of memory) or garbled its answer
                why = f"worker died ({type(e).__name__})"
            self._drop(kill=True)  # stuck beyond its interval timer (C code) or dead: replace it
            self.restarts += 1
            return None, why

    def close(self) -> None:
        with self._lock:
            self._drop(kill=False)


def in_process(fn: Callable, *args, timeout_s: float = 5.0):
    """fn(*args) here, timed by SIGALRM in the main thread; untimed elsewhere (fallback only)."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    old = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        return fn(*args)
    except ItemTimeout:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
