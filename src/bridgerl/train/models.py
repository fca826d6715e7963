"""The models a method trains: policy π(θ, w), the RL-only shadow θ̂ (sharing w), the frozen reference.

What is built follows the method's row in bridgerl.core.methods:
- methods without LoRA (the baselines) train all base weights θ; no LoRA, no shadow.
- `lora` wraps θ with a peft LoRA adapter w (all of θ trainable too); `trains_w` says whether w trains.
- `shadow` deep-copies the wrapped base into θ̂ whose LoRA modules *are* the policy's (one set of w
  parameters, used by both forwards); with train.bridge.shadow_offload θ̂ lives in host memory between
  its passes (bridgerl.train.shadow).
- The reference π_ref (frozen initial model) exists only when the KL coefficient is positive and
  the method uses RL.
- `train.gradient_checkpointing`: transformers' non-reentrant checkpointing of the decoder layers of the
  policy and θ̂ (the RL passes keep it on: bridgerl.train.updates.eval_mode).
Export merges w into θ and writes a plain model directory; θ̂ is never exported.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bridgerl.config import Config
from bridgerl.core.methods import METHODS


@dataclass
class Models:
    policy: nn.Module
    shadow: nn.Module | None = None
    ref: nn.Module | None = None
    theta: list[nn.Parameter] = field(default_factory=list)  # base weights of the policy
    shadow_theta: list[nn.Parameter] = field(default_factory=list)  # base weights of θ̂
    lora: list[nn.Parameter] = field(default_factory=list)  # w, shared by policy and shadow
    shadow_offload: object = None  # bridgerl.train.shadow.ShadowOffload when θ̂ lives in host memory

    def shadow_pass(self):
        """A context for the shadow's forwards and backwards (θ̂ brought to the device when offloaded)."""
        return self.shadow_offload.on_device() if self.shadow_offload is not None else contextlib.nullcontext()

    def param_groups(self, cfg: Config) -> list[dict]:
        t = cfg.train
        groups = [{"name": "theta", "params": self.theta, "lr": t.lr_theta}]
        if self.shadow is not None:
            groups.append({"name": "shadow", "params": self.shadow_theta, "lr": t.lr_theta})
        if self.lora and self.lora[0].requires_grad:
            groups.append({"name": "w", "params": self.lora, "lr": t.lr_w})
        return groups


def _is_lora(name: str) -> bool:
    return "lora_" in name


def _share_lora(policy: nn.Module, shadow: nn.Module) -> None:
    """Make every LoRA module of `shadow` the very module object of `policy` (one w for both)."""
    from peft.tuners.lora import LoraLayer

    pol = dict(policy.named_modules())
    for name, mod in shadow.named_modules():
        if isinstance(mod, LoraLayer):
            src = pol[name]
            for attr in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_dropout"):
                if hasattr(src, attr):
                    setattr(mod, attr, getattr(src, attr))


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """transformers' non-reentrant checkpointing of the decoder layers, on or off: `activation_checkpointing_*`
    where it exists (newer 5.x, where the `gradient_checkpointing_*` names are deprecated until v6), else those."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def build_models(cfg: Config, base: nn.Module, for_export: bool = False) -> Models:
    """Wrap a freshly loaded base model as the method requires (call after seeding torch).
    `for_export`: the policy alone (θ with its adapter w), no shadow, no reference."""
    t = cfg.train
    method = METHODS[t.method]
    if t.gradient_checkpointing and not for_export:  # the policy and shadow (θ̂ is a copy); the reference runs no backward
        _set_checkpointing(base, True)
    ref = None
    if method.rl and t.grpo.kl_coef > 0 and not for_export:
        ref = copy.deepcopy(base).eval()
        if t.gradient_checkpointing:
            _set_checkpointing(ref, False)
        for p in ref.parameters():
            p.requires_grad_(False)
    if not method.lora:
        for p in base.parameters():
            p.requires_grad_(True)
        return Models(policy=base, ref=ref, theta=[p for p in base.parameters()])

    from peft import LoraConfig, get_peft_model

    lc = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                    target_modules=t.lora.target_modules, bias="none", task_type="CAUSAL_LM")
    policy = get_peft_model(base, lc)
    train_w = method.trains_w
    theta, lora = [], []
    for n, p in policy.named_parameters():
        if _is_lora(n):
            p.requires_grad_(train_w)
            lora.append(p)
        else:
            p.requires_grad_(True)
            theta.append(p)
    shadow, shadow_theta = None, []
    if method.shadow and not for_export:
        shadow = copy.deepcopy(policy)
        _share_lora(policy, shadow)
        shadow_theta = [p for n, p in shadow.named_parameters() if not _is_lora(n)]
        shared = {id(p) for p in lora}
        assert all(id(p) in shared for n, p in shadow.named_parameters() if _is_lora(n)), "LoRA not shared"
    offload = None
    if shadow is not None and t.bridge.shadow_offload:
        from bridgerl.train.shadow import ShadowOffload

        # under ZeRO the host copy is θ̂'s master weights (fp32, as DeepSpeed keeps θ's)
        master = torch.float32 if t.distributed.strategy != "none" else None
        offload = ShadowOffload(shadow, lambda n: not _is_lora(n), master_dtype=master)
        shadow_theta = offload.host  # what the optimizer steps: θ̂ in host memory
    return Models(policy=policy, shadow=shadow, ref=ref, theta=theta, shadow_theta=shadow_theta, lora=lora,
                  shadow_offload=offload)


def shadow_state(models: Models) -> dict[str, torch.Tensor] | None:
    """θ̂ only (the shared LoRA weights are saved with the policy)."""
    if models.shadow is None:
        return None
    if models.shadow_offload is not None:
        return models.shadow_offload.state_dict()
    return {n: p.detach().clone() for n, p in models.shadow.named_parameters() if not _is_lora(n)}


def load_shadow_state(models: Models, sd: dict[str, torch.Tensor]) -> None:
    """θ̂ from a checkpoint (shadow_state's), in memory or offloaded."""
    if models.shadow_offload is not None:
        models.shadow_offload.load_state_dict(sd)
        return
    missing = models.shadow.load_state_dict(sd, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"checkpoint shadow has unexpected keys {missing.unexpected_keys[:3]}")


def merged_model(models: Models) -> nn.Module:
    """A plain transformers model: θ with w merged in (a copy; training state is untouched)."""
    if not models.lora:
        return models.policy
    merged = copy.deepcopy(models.policy).merge_and_unload()
    return merged


def export(models: Models, tokenizer, out_dir: Path) -> None:
    model = merged_model(models)
    keys = list(model.state_dict())
    bad = [k for k in keys if "lora_" in k]
    if bad:
        raise RuntimeError(f"export would contain LoRA weights: {bad[:3]}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
