"""Each process takes its share of the cores: one thread per core for two processes on two cores; what the
user sets (the parameter, $BRIDGERL_TORCH_THREADS, $OMP_NUM_THREADS) wins."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

from bridgerl.core import threads


def test_share_of_the_cores_per_local_process():
    assert threads.choose(None, {}, cores=2) == 2
    assert threads.choose(None, {"LOCAL_WORLD_SIZE": "2"}, cores=2) == 1
    assert threads.choose(None, {"LOCAL_WORLD_SIZE": "4"}, cores=2) == 1  # never below one
    assert threads.choose(None, {"LOCAL_WORLD_SIZE": "2"}, cores=16) == 8


def test_what_the_user_sets_wins():
    env = {"LOCAL_WORLD_SIZE": "2", "BRIDGERL_TORCH_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert threads.choose(6, env, cores=2) == 6
    assert threads.choose(None, env, cores=2) == 3
    assert threads.choose(None, {"OMP_NUM_THREADS": "5"}, cores=2) is None  # torch already follows it


def test_container_quota_caps_the_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs
    assert threads.available_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert threads.available_cores(cpu_max) == len(os.sched_getaffinity(0))


def test_configure_sets_torch_in_a_fresh_process():
    code = ("import os; os.environ.pop('OMP_NUM_THREADS', None); os.environ['LOCAL_WORLD_SIZE'] = '2';"
            "from bridgerl.core import threads; import torch; torch.set_num_threads(7); print(threads.configure())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "BRIDGERL_TORCH_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "PYTHONPATH": str(REPO / "src")}).stdout
    assert int(out) == max(1, threads.available_cores() // 2)
