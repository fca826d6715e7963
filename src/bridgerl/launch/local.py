"""Launching `bridgerl train` on several processes, apart from training itself.

`spawn_command()` decides whether `bridgerl train` must re-execute itself under torchrun (`--nproc N` /
train.distributed.nproc on one node, or a Kubeflow pod whose PET_* variables torchrun reads itself);
`spawn()` runs it. The Kubernetes job launcher is `bridgerl.launch.k8s`. Once launched, each process
finds its place with `bridgerl.train.parallel.detect()`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from bridgerl.config import Config, ConfigError


def _int(v: str | None, default: int = 1) -> int:
    try:
        return int(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def spawn_command(cfg: Config, nproc: int | None = None, environ=None) -> list[str] | None:
    """The torchrun command prefix when this `bridgerl train` must re-execute itself, else None.

    - already a torchrun worker (LOCAL_RANK set): None;
    - Kubeflow (PET_NNODES / PET_NPROC_PER_NODE, set by the Training Operator and Trainer v2 for
      torchrun): plain `torchrun`, which takes its node count, rank and master from PET_*;
    - WORLD_SIZE > 1 without LOCAL_RANK (a PyTorchJob starting one process per pod): None;
    - `--nproc N` (else train.distributed.nproc) > 1: `torchrun --standalone --nproc_per_node N`.
    """
    e = os.environ if environ is None else environ
    strategy = cfg.train.distributed.strategy
    if "LOCAL_RANK" in e or "TORCHELASTIC_RUN_ID" in e:
        return None
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    if "PET_NNODES" in e or "PET_NPROC_PER_NODE" in e:
        procs = _int(e.get("PET_NNODES")) * _int(e.get("PET_NPROC_PER_NODE"), default=2)
        if procs > 1:
            if strategy == "none":
                raise ConfigError(f"train.distributed.strategy = 'none', but this Kubeflow job asks for {procs} "
                                  "processes (PET_NNODES x PET_NPROC_PER_NODE): set it to zero2 or zero3")
            return torchrun
        return None
    if _int(e.get("WORLD_SIZE")) > 1:
        return None
    n = cfg.train.distributed.nproc if nproc is None else nproc
    if n < 1:
        raise ConfigError(f"--nproc {n}: must be at least 1")
    if n > 1:
        if strategy == "none":
            raise ConfigError(f"--nproc {n} needs train.distributed.strategy = zero2 or zero3 (it is 'none')")
        return torchrun + ["--standalone", f"--nproc_per_node={n}"]
    return None


def spawn(prefix: list[str], argv: list[str]) -> int:
    """Run `bridgerl <argv>` (without its --nproc) under torchrun and return its exit status."""
    args, skip = [], False
    for a in argv:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        args.append(a)
    cmd = [*prefix, "-m", "bridgerl", *args]
    print("bridgerl: launching " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, env={**os.environ, "BRIDGERL_LAUNCHED": "1"}).returncode
