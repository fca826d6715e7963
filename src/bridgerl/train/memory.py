"""Training-state memory: the bytes of weights, gradients and optimizer state a run keeps, split into
what stays on the training device and what lives in host memory (the offloaded shadow θ̂,
bridgerl.train.shadow). Shared tensors (the LoRA w of policy and shadow) are counted once. On a GPU the
split follows the tensors' devices; on a CPU-only machine it follows the bookkeeping (what is offloaded),
so that a CPU benchmark shows what a GPU run would keep on the device."""

from __future__ import annotations

import resource

import torch

from bridgerl.train.models import Models


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def training_state(models: Models, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """{'device': bytes, 'host': bytes} of weights, gradients and optimizer state."""
    host_params = list(models.shadow_offload.host) if models.shadow_offload is not None else []
    host_ids = {id(p) for p in host_params}
    modules = [m for m in (models.policy, models.shadow, models.ref) if m is not None]
    seen: set[int] = set()
    out = {"device": 0, "host": 0}

    def count(t: torch.Tensor | None, host: bool) -> None:
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        on_host = host or (t.device.type == "cpu" and torch.cuda.is_available())
        out["host" if on_host else "device"] += _nbytes(t)

    for p in [p for m in modules for p in m.parameters()] + host_params:
        count(p, id(p) in host_ids)
        count(p.grad, id(p) in host_ids)
    own = models.shadow_offload.optimizer if models.shadow_offload is not None else None  # θ̂'s, under ZeRO
    own = getattr(own, "optim", own)  # ZeroRedundancyOptimizer: this process's shard
    for p, st in [*optimizer.state.items(), *(own.state.items() if own is not None else [])]:
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                count(v, id(p) in host_ids)
    return out


def peak_memory_mb() -> float:
    """Peak GPU memory allocated (reset when a Trainer starts); on CPU the process's peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def state_memory_mb(models: Models, optimizer: torch.optim.Optimizer) -> float:
    """Memory of the training state on the training device: weights of policy, shadow and reference, their
    gradients and the optimizer state (shared tensors once; an offloaded shadow is host memory, not counted).
    Comparable across methods on any device."""
    return training_state(models, optimizer)["device"] / 2**20
