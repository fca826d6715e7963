"""π(θ, w)'s weights for a rollout engine: the LoRA adapter w merged into the base weights θ.

`merged_weights` yields (name, tensor) pairs named like the base model's own parameters
("model.layers.0.self_attn.q_proj.weight"), one tensor at a time: each LoRA-wrapped linear layer's
weight is computed as W + ΔW with peft's `get_delta_weight`, nothing is merged in place, and no copy of
the whole model is made. It reads the policy only; the shadow θ̂ is a different module and is never
passed here. Under ZeRO-3 the caller gathers the partitioned parameters first.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _lora_delta(module) -> torch.Tensor | None:
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return None  # already in the base weight / adapters switched off: the base weight is π's weight
    delta = None
    for a in module.active_adapters:
        if a not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(a):
            raise NotImplementedError("merged_weights: DoRA adapters (merge a copy with merge_and_unload instead)")
        d = module.get_delta_weight(a)
        delta = d if delta is None else delta + d
    return delta


@torch.no_grad()
def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged weights of a peft model (or a plain model's own parameters), base-model names."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        for name, p in model.named_parameters():
            yield name, p.detach()
        return
    base = model.get_base_model()
    lora_modules = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, p in base.named_parameters():
        if "lora_" in name:  # lora_A / lora_B / lora_embedding_* / lora_magnitude_vector: folded into W
            continue
        if ".base_layer." not in name:
            yield name, p.detach()
            continue
        owner, pname = name.rsplit(".base_layer.", 1)
        t = p.detach()
        if pname == "weight" and owner in lora_modules:
            delta = _lora_delta(lora_modules[owner])
            if delta is not None:
                t = t + delta.to(t.dtype)
        yield f"{owner}.{pname}", t
