"""One bridgerl process per output: an exclusive lock on each output a command writes, taken at once.

The lock is flock(2) on a sibling file `.<name>.bridgerl.lock` (never inside the output, which DVC
and the atomic writers replace). The kernel drops it when its process dies, so a killed run never
leaves a stale lock behind; the file records who holds it, for the second process's error message.
Only the lead process locks: processes a command starts (torchrun workers) inherit
BRIDGERL_LOCKS_HELD, and the other ranks of a multi-node job (RANK / NODE_RANK > 0) write nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from bridgerl.core.io import DataError

ENV = "BRIDGERL_LOCKS_HELD"


class OutputLocked(DataError):
    """Another bridgerl process is writing the same output."""


def lock_path(output: str | Path) -> Path:
    p = Path(output).resolve()
    return p.parent / f".{p.name}.bridgerl.lock"


def _lead() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "NODE_RANK", "PET_NODE_RANK", "GROUP_RANK"))


@contextlib.contextmanager
def hold(outputs: Iterable[str | Path], command: str) -> Iterator[None]:
    """Lock every output for the duration, or raise OutputLocked naming the output and its holder."""
    if os.environ.get(ENV) or not _lead():
        yield
        return
    fds: list[int] = []
    try:
        for out in sorted({Path(o).resolve() for o in outputs}):
            lp = lock_path(out)
            lp.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise OutputLocked(f"{out}: in use by {holder}; wait for it to finish or stop it "
                                   f"(the lock is {lp}, released when that process exits)") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} (`bridgerl {command}`, since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())})\n".encode())
            fds.append(fd)
        os.environ[ENV] = "1"
        yield
    finally:
        if fds:
            os.environ.pop(ENV, None)
        for fd in fds:
            os.ftruncate(fd, 0)  # released: the file names no holder (a killed holder's line stays, harmlessly)
            os.close(fd)
