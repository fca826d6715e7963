"""π(θ, w)'s weights for a rollout engine: the LoRA adapter w merged into the base weights θ.

`merged_weights` yields (name, tensor) pairs named like the base model's own parameters
("model.layers.0.self_attn.q_proj.weight"), one tensor at a time: each LoRA-wrapped linear layer's
weight is computed as W + ΔW with peft's `get_delta_weight`, nothing is merged in place, and no copy of
the whole model is made. It reads the policy only; the shadow θ̂ is a different module and is never
passed here. Under ZeRO-3 pass `gather` (the training engine's `gathered`): each tensor is then gathered
just for the time it takes to compute it (the base weight with its LoRA factors), and a copy is yielded,
so the whole rollout batch costs one gather of each parameter, whatever the number of tokens generated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import ContextManager

import torch
from torch import nn

Gather = Callable[[Iterable[nn.Parameter]], ContextManager]


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
def merged_weights(model: nn.Module, gather: Gather | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The merged weights of a peft model (or a plain model's own parameters), base-model names.
    `gather(params)`: a context in which partitioned `params` are whole (ZeRO-3); tensors are then copies."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    def whole(params):
        return gather(params) if gather is not None else contextlib.nullcontext()

    def out(t: torch.Tensor) -> torch.Tensor:  # a gathered parameter's storage is freed when its context ends
        return t.detach().clone() if gather is not None else t.detach()

    if not isinstance(model, PeftModel):
        for name, p in model.named_parameters():
            with whole([p]):
                yield name, out(p)
        return
    base = model.get_base_model()
    lora_modules = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, p in base.named_parameters():
        if "lora_" in name:  # lora_A / lora_B / lora_embedding_* / lora_magnitude_vector: folded into W
            continue
        if ".base_layer." not in name:
            with whole([p]):
                yield name, out(p)
            continue
        owner, pname = name.rsplit(".base_layer.", 1)
        module = lora_modules.get(owner)
        if pname != "weight" or module is None:
            with whole([p]):
                yield f"{owner}.{pname}", out(p)
            continue
        with whole([p, *(q for n, q in module.named_parameters() if "lora_" in n)]):
            delta = _lora_delta(module)
            yield f"{owner}.{pname}", out(p) if delta is None else p.detach() + delta.to(p.dtype)
