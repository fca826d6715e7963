"""How many intra-op threads torch uses in this process.

On a shared machine, torch's default (every core, in every process) oversubscribes the CPU as soon as
two processes run: with 2 processes on 2 cores, two threads each made an iteration 14 s instead of 0.85 s.
So each process takes its share of the cores it may run on: cores available to it (CPU affinity, and a
container's CPU quota) divided by the processes torchrun started on this node (LOCAL_WORLD_SIZE), at
least one. What the user sets wins, in this order: the `threads` parameter, $BRIDGERL_TORCH_THREADS,
$OMP_NUM_THREADS (then torch's own choice is kept).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping


def available_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose(setting: int | None = None, environ: Mapping[str, str] | None = None, cores: int | None = None) -> int | None:
    """The thread count to set, or None to keep torch's (the user set OMP_NUM_THREADS)."""
    env = os.environ if environ is None else environ
    if setting:
        return setting
    if env.get("BRIDGERL_TORCH_THREADS"):
        return max(1, int(env["BRIDGERL_TORCH_THREADS"]))
    if env.get("OMP_NUM_THREADS"):
        return None
    local = max(1, int(env.get("LOCAL_WORLD_SIZE") or 1))
    return max(1, (available_cores() if cores is None else cores) // local)


def configure(setting: int | None = None) -> int:
    """Size torch's intra-op threads for this process; returns the count in use."""
    import torch

    n = choose(setting)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
