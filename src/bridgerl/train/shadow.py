"""Where the shadow θ̂ lives between its passes (train.bridge.shadow_offload).

BRIDGE's θ̂ is a full copy of the base weights with its own optimizer state; it is used once per
iteration (its RL pass, spec step 4) and stepped once. By default it stays in device memory (exact,
nothing moves). `ShadowOffload` keeps θ̂ in host memory instead (pinned on CUDA) as the parameters the
optimizer steps, so AdamW's moments are created and updated there too (on the CPU); for the pass, θ̂ is
copied into the shadow module on the device (in the module's dtype), and afterwards its gradients are
copied back to the host parameters and the device copy is released.

- One process (TorchEngine): the host θ̂ is a parameter group of the trainer's one optimizer, so the
  maths is the in-memory shadow's exactly (the same AdamW, the same global-norm clipping over θ, θ̂ and
  w), only in another place.
- Under ZeRO (DeepSpeedEngine): θ̂ stays outside DeepSpeed. Every rank holds the host copy (in fp32 when
  the model trains in bf16/fp16, as DeepSpeed's master weights); its own optimizer (`optimizer`, the
  trainer's class and settings, θ's learning rate and schedule) is torch's ZeroRedundancyOptimizer, so
  each rank keeps and steps a share of the optimizer state and the ranks then exchange θ̂; the
  gradients of the pass are averaged over the ranks on the device before they go to the host, as
  DeepSpeed averages θ's and w's. One difference: θ̂'s gradient is clipped by its own norm (θ and w by DeepSpeed's), so
  with clipping that binds the result differs from the in-memory shadow (identical otherwise).
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


class ShadowOffload:
    """θ̂'s base weights held in host memory; `on_device()` brings them to the shadow module for a pass."""

    def __init__(self, shadow: nn.Module, is_shadow_param, master_dtype: torch.dtype | None = None):
        self.named = [(n, p) for n, p in shadow.named_parameters() if is_shadow_param(n)]
        self.device = self.named[0][1].device if self.named else torch.device("cpu")
        pin = torch.cuda.is_available()
        self.host: list[nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None  # θ̂'s own optimizer (under ZeRO; see above)
        for _, p in self.named:
            h = p.detach().to("cpu", dtype=master_dtype or p.dtype, copy=True)
            self.host.append(nn.Parameter(h.pin_memory() if pin else h, requires_grad=p.requires_grad))
        self.depth = 0
        self._release()

    def _release(self) -> None:
        for _, p in self.named:
            p.grad = None
            p.data = torch.empty(0, dtype=p.dtype, device=self.device)

    @property
    def resident(self) -> bool:
        """Whether θ̂ is in the shadow module now (during a pass)."""
        return self.depth > 0

    @contextlib.contextmanager
    def on_device(self):
        """θ̂ in the shadow module for the enclosed forwards/backwards; their gradients then go to the host
        parameters (added to what is there: several passes before one step accumulate)."""
        if self.depth == 0:
            for (_, p), h in zip(self.named, self.host):
                p.data = h.detach().to(self.device, dtype=p.dtype, copy=True, non_blocking=True)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self._average_grads()
                for (_, p), h in zip(self.named, self.host):
                    if p.grad is not None:
                        g = p.grad.to("cpu", dtype=h.dtype, copy=True)
                        h.grad = g if h.grad is None else h.grad.add_(g)
                self._release()

    def _average_grads(self) -> None:
        """Under data parallelism: the mean of the ranks' gradients of the pass (on the device)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        for _, p in self.named:  # every rank runs the same passes, so every rank calls the same collectives
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(world)

    def step(self, lr: float, max_grad_norm: float | None) -> float | None:
        """Under ZeRO: clip θ̂'s gradient by its own norm, step `optimizer` at `lr`, clear the gradients.
        Returns the norm before clipping (None without clipping)."""
        assert self.optimizer is not None, "the offloaded shadow has no optimizer of its own (one process)"
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        norm = None
        if max_grad_norm:
            params = [h for h in self.host if h.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm)) if params else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: h.detach().clone() for (n, _), h in zip(self.named, self.host)}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = [n for n, _ in self.named if n not in sd]
        if missing:
            raise RuntimeError(f"checkpoint shadow lacks {missing[:3]}")
        with torch.no_grad():
            for (n, _), h in zip(self.named, self.host):
                h.copy_(sd[n])
