"""Data parallelism as the normal path of training: the process's place, collectives, sharding, loss
weights and metric reduction. With one process every function here is a no-op (identity collectives,
the whole batch as the shard, loss weights of exactly 1), so one code path serves 1 to N processes.

- `detect()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; `init_process_group()` joins the job
  (DeepSpeed's way) when there are several processes or a DeepSpeed engine, else does nothing.
- `shard_positions` / `ShardedSampler`: each rank's slice of the global prompt or demo batch, aligned with
  the update's mini-batches (rank-local mini-batch k ⊂ global mini-batch k).
- `weigh()`: per-mini-batch loss weights W·n_rank/n_global so that averaging the rank gradients (what
  DeepSpeed does) gives the global batch's gradient.
- `reduce_metrics()`: the ranks' metrics averaged (tokens/s summed, times and memory maxed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from bridgerl.config import Config, ConfigError

SUM_METRICS = ("tokens_per_s", "generated_tokens", "batch_tokens", "trained_tokens", "rollout_allgathers",
               "rollout_allgather_mb")
SUM_PREFIXES = ("reward_sum/", "reward_n/", "reward_failures/")  # per reward term (bridgerl.rewards.terms)
MAX_METRICS = ("peak_memory_mb", "step_time_s", "wall_time_s", "rollout_time_s", "optimizer_steps")


@dataclass(frozen=True)
class ProcEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(environ=None) -> ProcEnv:
    """The process's place in a torchrun job (or a one-process-per-pod PyTorchJob); (0, 1, 0) alone."""
    e = os.environ if environ is None else environ
    ws = int(e.get("WORLD_SIZE") or 1)
    if ws > 1 or "LOCAL_RANK" in e:
        return ProcEnv(int(e.get("RANK") or 0), ws, int(e.get("LOCAL_RANK") or 0))
    return ProcEnv()


def check_world(cfg: Config, env: ProcEnv) -> None:
    if env.world_size > 1 and cfg.train.distributed.strategy == "none":
        raise ConfigError(f"train.distributed.strategy = 'none', but WORLD_SIZE = {env.world_size}: "
                          "set it to zero2 or zero3")


def init_process_group(env: ProcEnv, cfg: Config) -> torch.device:
    """Join the job's process group (env://, the DeepSpeed way) when there are several processes or a
    DeepSpeed engine; returns this rank's device."""
    check_world(cfg, env)
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = torch.device(f"cuda:{env.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if cfg.train.distributed.strategy == "none" or torch.distributed.is_initialized():
        return device
    import deepspeed

    backend = cfg.train.distributed.backend
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if "MASTER_ADDR" not in os.environ and env.world_size == 1:  # DeepSpeed in a lone process
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # what torchrun would set for one process (the DeepSpeed engine reads LOCAL_RANK)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend=backend)
    return device


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    if not is_distributed():
        return list(values)
    dev = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(t, op={"sum": torch.distributed.ReduceOp.SUM,
                                        "max": torch.distributed.ReduceOp.MAX}[op])
    return t.cpu().tolist()


_HOST_GROUP: list = []


def host_group():
    """A process group for collectives on host (CPU) tensors: the default one under gloo, else a gloo group
    over the same ranks (made once; every rank must call this, in the same order)."""
    if not _HOST_GROUP:
        gloo = torch.distributed.get_backend() == "gloo"
        _HOST_GROUP.append(None if gloo else torch.distributed.new_group(backend="gloo"))
    return _HOST_GROUP[0]


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def allgather_traffic() -> tuple[int, int] | None:
    """(calls, bytes) of the all-gathers DeepSpeed's comms logger has recorded in this process so far
    (train.distributed.deepspeed.comms_logger.enabled with prof_all); None when it is not recording."""
    try:
        from deepspeed.comm import comm as dscomm
    except ImportError:
        return None
    logger = getattr(dscomm, "comms_logger", None)
    if logger is None or not logger.enabled:
        return None
    calls = size = 0
    for op, by_size in logger.comms_dict.items():
        if "all_gather" in op or "allgather" in op:
            for msg_size, rec in by_size.items():
                calls += rec[0]
                size += rec[0] * msg_size
    return calls, size


def close() -> None:
    """All ranks, at the end: wait for each other, then leave the process group cleanly."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        _HOST_GROUP.clear()


# ------------------------------------------------------------------------------------------------
# sharding
# ------------------------------------------------------------------------------------------------
def shard_positions(n: int, world_size: int, rank: int, blocks: int = 1) -> list[int]:
    """Rank `rank`'s positions in a global batch of n: its slice of each of `blocks` contiguous blocks
    (the update's mini-batches), so that rank-local mini-batch k is a slice of global mini-batch k.
    One process gets the whole batch (its mini-batches may then differ in size by one)."""
    if world_size == 1:
        return list(range(n))
    if n % (blocks * world_size):
        raise ValueError(f"batch of {n} cannot be split into {blocks} mini-batches x {world_size} ranks")
    per_block, per_rank = n // blocks, n // (blocks * world_size)
    return [b * per_block + rank * per_rank + i for b in range(blocks) for i in range(per_rank)]


def check_shardable(cfg: Config, world_size: int) -> None:
    """The global batches divide into the ranks' shards of every mini-batch (nothing to check alone)."""
    if world_size == 1:
        return
    from bridgerl.core.methods import METHODS

    t, m = cfg.train, METHODS[cfg.train.method]
    n = t.grpo.mini_batches
    sft_blocks = n if m.sft_in_minibatches else 1
    if m.rl and t.prompt_batch % (world_size * n):
        raise ConfigError(f"train.prompt_batch = {t.prompt_batch} must be divisible by the number of "
                          f"processes ({world_size}) x train.grpo.mini_batches ({n})")
    if m.sft and t.demo_batch % (world_size * sft_blocks):
        raise ConfigError(f"train.demo_batch = {t.demo_batch} must be divisible by the number of processes "
                          f"({world_size})" + (f" x train.grpo.mini_batches ({n})" if sft_blocks > 1 else ""))


class ShardedSampler:
    """An EpochSampler's global batch, cut to this rank's share; its state is the inner sampler's."""

    def __init__(self, inner, world_size: int, rank: int, blocks: int):
        self.inner, self.world_size, self.rank, self.blocks = inner, world_size, rank, blocks
        self.positions: list[int] = []  # positions of the last draw in the global batch

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def next(self) -> list[int]:
        glob = self.inner.next()
        self.positions = shard_positions(len(glob), self.world_size, self.rank, self.blocks)
        return [glob[p] for p in self.positions]

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, s: dict) -> None:
        self.inner.load_state_dict(s)


def weigh(batch, blocks: int, token_level: bool, world_size: int) -> None:
    """Set `batch.extras['loss_scale']`: per mini-batch, W·n_rank/n_global (n: tokens or sequences), so
    that the average of the rank gradients is the gradient of the global batch's loss (1.0 alone)."""
    from bridgerl.train.batches import split

    parts = split(batch, blocks)
    local = [float(p.mask.sum()) if token_level else float(len(p)) for p in parts]
    glob = all_reduce(local)
    w = torch.cat([torch.full((len(p),), world_size * n / max(g, 1.0))
                   for p, n, g in zip(parts, local, glob)])
    batch.extras["loss_scale"] = w.to(batch.input_ids.device)


def reduce_metrics(m: dict, world_size: int) -> dict:
    """The ranks' metrics: averaged, except tokens/s and per-term reward sums/counts (summed) and times / peak
    memory (maxed). Every rank has the same keys (all_reduce pairs them by position)."""
    keys = sorted(k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step")
    vals = [float(m[k]) for k in keys]
    sums, maxs = all_reduce(vals, "sum"), all_reduce(vals, "max")
    for k, s, mx in zip(keys, sums, maxs):
        m[k] = mx if k in MAX_METRICS else s if k in SUM_METRICS or k.startswith(SUM_PREFIXES) else s / world_size
    return m
