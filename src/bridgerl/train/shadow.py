"""Where the shadow θ̂ lives between its passes (train.bridge.shadow_offload).

BRIDGE's θ̂ is a full copy of the base weights with its own optimizer state; it is used once per
iteration (its RL pass, spec step 4) and stepped once. By default it stays in device memory (exact,
nothing moves). `ShadowOffload` keeps θ̂ in host memory instead (pinned on CUDA) as the parameters the
optimizer steps, so AdamW's moments are created and updated there too (on the CPU); for the pass, θ̂ is
copied into the shadow module on the device, and afterwards its gradients are copied back to the host
parameters and the device copy is released. The maths is unchanged (the same AdamW on the same
numbers, in another place): only the time of two copies of θ̂ per iteration and a CPU optimizer step.
One process (TorchEngine) only: under ZeRO, DeepSpeed owns the parameters (use
train.distributed.offload there).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class ShadowOffload:
    """θ̂'s base weights held in host memory; `on_device()` brings them to the shadow module for a pass."""

    def __init__(self, shadow: nn.Module, is_shadow_param):
        self.named = [(n, p) for n, p in shadow.named_parameters() if is_shadow_param(n)]
        self.device = self.named[0][1].device if self.named else torch.device("cpu")
        pin = torch.cuda.is_available()
        self.host: list[nn.Parameter] = []
        for _, p in self.named:
            h = p.detach().to("cpu", copy=True)
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
                p.data = h.detach().to(self.device, copy=True, non_blocking=True)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                for (_, p), h in zip(self.named, self.host):
                    if p.grad is not None:
                        g = p.grad.to("cpu", copy=True)
                        h.grad = g if h.grad is None else h.grad.add_(g)
                self._release()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: h.detach().clone() for (n, _), h in zip(self.named, self.host)}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = [n for n, _ in self.named if n not in sd]
        if missing:
            raise RuntimeError(f"checkpoint shadow lacks {missing[:3]}")
        with torch.no_grad():
            for (n, _), h in zip(self.named, self.host):
                h.copy_(sd[n])
