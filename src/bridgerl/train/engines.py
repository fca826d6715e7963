"""Engines: what runs the trainer's update rules on the hardware, behind one small interface.

An update rule (bridgerl.train.updates) computes losses with the models and calls `engine.backward(loss)`
(several times when a rule accumulates, as BRIDGE's two passes do) and then `engine.step()`, which
clips, applies the optimizer and zeroes the gradients. The engine also owns the checkpoint of the
weights and optimizer, gathering weights (export, the KL reference snapshot) and generation settings.

- `TorchEngine`: one process, plain torch. Its checkpoint is `checkpoint_dir/step-NNNNNN/state.pt`
  (bridgerl.train.checkpoint) holding the weights, the optimizer and the trainer's state.
- `DeepSpeedEngine`: DeepSpeed ZeRO-2/3 (config from params, `ds_config`), one or more processes. ONE
  DeepSpeed engine trains θ, θ̂ and w (policy and shadow in one container module, the shared LoRA once;
  an offloaded θ̂ stays outside it, in host memory with its own optimizer: bridgerl.train.shadow);
  the frozen reference is ZeRO-3-partitioned when the policy is; checkpoints go through DeepSpeed's
  `save_checkpoint` / `load_checkpoint` (+ the trainer state as client state, one RNG file per rank);
  rank 0 writes `bridgerl_checkpoint.json` last (the sha256 of every file) and on resume verifies the
  tags newest first, falling back to the newest intact one; DeepSpeed's reader is replaced by one with
  `weights_only=True` (its own unpickles anything: code execution for whoever can write the checkpoint
  volume), allowing only the few DeepSpeed data classes its state holds; export gathers the full
  weights on rank 0.

Gradient clipping (`train.max_grad_norm`) is the same on both: the global norm over all trained
parameters (θ, θ̂ and w together), DeepSpeed's `gradient_clipping` (docs/distributed.md says why).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from bridgerl.config import Config, deep_merge
from bridgerl.core.methods import METHODS
from bridgerl.train import checkpoint
from bridgerl.train.models import Models, build_models
from bridgerl.train.parallel import ProcEnv, barrier


def _ds_safe_globals() -> list:
    """The classes (not functions) DeepSpeed's ZeRO checkpoint files hold besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _weights_only_load(path: str, map_location=None):
    """DeepSpeed's checkpoint reader with `weights_only=True`; anything else is a CheckpointError naming the file."""
    with torch.serialization.safe_globals(_ds_safe_globals()):
        return checkpoint.safe_load(path, **({} if map_location is None else {"map_location": map_location}))


def _param_dict(module: nn.Module) -> dict[str, nn.Parameter]:
    return dict(module.named_parameters())


class TorchEngine:
    """Plain torch in one process."""

    name = "torch"

    def __init__(self, cfg: Config, models: Models, optimizer: torch.optim.Optimizer, env: ProcEnv):
        self.cfg, self.models, self.optimizer, self.env = cfg, models, optimizer, env
        self.grad_norm: float | None = None  # total norm before clipping, at the last step
        self.shadow_grad_norm: float | None = None  # an offloaded θ̂'s own norm under ZeRO (bridgerl.train.shadow)
        self.optimizer_steps = 0  # optimizer steps taken by this process (all of a method's updates)

    # -- update ----------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        mg = self.cfg.train.max_grad_norm
        if mg:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if params:
                self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, mg))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1

    # -- weights -------------------------------------------------------------------------------
    partitioned = False  # parameters are split across ranks (ZeRO-3): read them inside `gathered`

    def policy_module(self) -> nn.Module:
        """The policy module itself (θ with its LoRA w), for reading its weights."""
        return self.models.policy

    def gathered(self, params, modify: bool = False):
        """A context in which `params` are whole on every rank (and changes to them are kept with `modify`)."""
        return contextlib.nullcontext()

    def generate_kwargs(self) -> dict:
        return {}

    def export_models(self) -> Models | None:
        """The policy to export (θ with its LoRA w; no shadow) on rank 0, None on the other ranks."""
        return self.models

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, ckpt_dir: str | Path, step: int, state: dict, rng: dict, key: str, keep: int) -> Path:
        from bridgerl.train.models import shadow_state

        full = {**state, "rng": rng,
                "policy": {k: v.detach().clone() for k, v in self.models.policy.state_dict().items()},
                "shadow": shadow_state(self.models), "optimizer": self.optimizer.state_dict()}
        return checkpoint.save(ckpt_dir, step, full, key, keep)

    def load(self, ckpt_dir: str | Path, key: str) -> tuple[dict, dict] | None:
        s = checkpoint.load_latest(ckpt_dir, key)
        if s is None:
            return None
        self.models.policy.load_state_dict(s["policy"])
        if s["shadow"] is not None:
            from bridgerl.train.models import load_shadow_state

            load_shadow_state(self.models, s["shadow"])
        self.optimizer.load_state_dict(s["optimizer"])
        return s, s["rng"]

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# DeepSpeed
# ------------------------------------------------------------------------------------------------
def sequences_per_rank(cfg: Config, world_size: int) -> int:
    """Sequences one rank backpropagates per optimizer step (DeepSpeed's nominal micro batch)."""
    t = cfg.train
    if not METHODS[t.method].rl:
        return max(1, t.demo_batch // world_size)
    return max(1, t.prompt_batch * t.grpo.group_size // (t.grpo.mini_batches * world_size))


def ds_config(cfg: Config, world_size: int, dtype: torch.dtype) -> dict:
    """The DeepSpeed config for train.distributed, with train.distributed.deepspeed merged over it."""
    t, d = cfg.train, cfg.train.distributed
    if d.strategy == "none":
        raise ValueError("ds_config: train.distributed.strategy is 'none'")
    stage = {"zero2": 2, "zero3": 3}[d.strategy]
    zero: dict = {"stage": stage}
    if d.offload:
        pin = torch.cuda.is_available()
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    micro = sequences_per_rank(cfg, world_size)
    conf = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        # step() is the accumulation boundary: the backwards before it accumulate (BRIDGE makes two per step)
        "managed_gradient_accumulation": False,
        "train_batch_size": micro * world_size,
        "gradient_clipping": float(t.max_grad_norm or 0.0),  # the global norm: as TorchEngine
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        # the trainer's own torch optimizer (AdamW/SGD with the θ/θ̂/w groups) is the client optimizer
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return deep_merge(conf, d.deepspeed)


class TrainedModules(nn.Module):
    """What the one engine trains: the policy (θ, w) and, for BRIDGE, the shadow (θ̂, the same w).
    An offloaded shadow (train.bridge.shadow_offload) is reachable but not a submodule: DeepSpeed neither
    partitions nor steps θ̂, which lives in host memory with its own optimizer (bridgerl.train.shadow)."""

    def __init__(self, policy: nn.Module, shadow: nn.Module | None, shadow_outside: bool = False):
        super().__init__()
        self.policy = policy
        if shadow is not None and shadow_outside:
            object.__setattr__(self, "shadow", shadow)  # a plain attribute, not a registered module
        elif shadow is not None:
            self.shadow = shadow

    def forward(self, *args, which: str = "policy", fn=None, **kwargs):
        module = getattr(self, which)
        return fn(module) if fn is not None else module(*args, **kwargs)


class ViaEngine:
    """Stands in for the policy or the shadow: calls go through `engine(..., which=...)` (DeepSpeed hooks
    its backward bookkeeping onto the engine's forward outputs); everything else reaches the module."""

    def __init__(self, engine, which: str, module: nn.Module):
        self.__dict__.update(_engine=engine, _which=which, _module=module)

    def __call__(self, *args, **kwargs):
        return self._engine(*args, which=self._which, **kwargs)

    def run_inside(self, fn):
        """`fn(module)` inside the engine's forward (ZeRO-3 gathers, backward hooks on what it returns):
        how the chunked log-probs (bridgerl.train.losses.token_logprobs) call the decoder and the head."""
        return self._engine(which=self._which, fn=fn)

    def __getattr__(self, name):
        return getattr(self._module, name)


DS_MARKER = "bridgerl_checkpoint.json"  # written last: the checkpoint is complete; the sha256 of its files
SHADOW_FILE = "shadow_offload.pt"  # the offloaded θ̂ and its optimizer in a DeepSpeed checkpoint (rank 0's)


class DeepSpeedEngine(TorchEngine):
    """DeepSpeed ZeRO-2/3 on one or more processes."""

    name = "deepspeed"

    def __init__(self, cfg: Config, models: Models, optimizer: torch.optim.Optimizer, env: ProcEnv):
        import deepspeed

        super().__init__(cfg, models, optimizer, env)
        self.zero3 = cfg.train.distributed.strategy == "zero3"
        dtype = next(models.policy.parameters()).dtype
        self.ds_config = ds_config(cfg, env.world_size, dtype)
        self.plain_policy = models.policy
        self.shadow_offload = models.shadow_offload
        trained = TrainedModules(models.policy, models.shadow, shadow_outside=self.shadow_offload is not None)
        self.ds, _, _, _ = deepspeed.initialize(model=trained, optimizer=optimizer, config=self.ds_config)
        models.policy = ViaEngine(self.ds, "policy", models.policy)
        if models.shadow is not None:
            models.shadow = ViaEngine(self.ds, "shadow", models.shadow)
        self.ref_engine = None
        if self.zero3 and models.ref is not None:  # inference engine: the frozen reference, partitioned
            ref_conf = {k: v for k, v in self.ds_config.items() if k != "gradient_clipping"}
            self.ref_engine, _, _, _ = deepspeed.initialize(model=models.ref, config=ref_conf)
            models.ref.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        self.ds.step()  # gradient reduction, clipping (global norm), optimizer step, zero_grad
        if self.shadow_offload is not None:  # θ̂ outside DeepSpeed, at θ's learning rate (same schedule)
            theta_lr = next(g["lr"] for g in self.optimizer.param_groups if g.get("name") == "theta")
            self.shadow_grad_norm = self.shadow_offload.step(theta_lr, self.cfg.train.max_grad_norm)
        self.optimizer_steps += 1
        self._clear_stale_accumulation()
        if self.cfg.train.max_grad_norm:
            norm = self.ds.get_global_grad_norm()
            self.grad_norm = None if norm is None else float(norm)

    def _clear_stale_accumulation(self) -> None:
        """Zero DeepSpeed's gradient accumulation buffers after a step.

        With unmanaged accumulation, deepspeed 0.19 copies a gradient into its buffer only in a step's
        first backward and *adds* in later ones (ZeRO-3: the partition buffer; ZeRO-2 with offload: the
        CPU accumulation buffers), so parameters first reached by a later backward (θ̂ in BRIDGE's second
        one) would add onto the previous step's gradient. Tested against one process for each setting.
        """
        opt = self.ds.optimizer
        buf = getattr(opt, "grad_partitions_flat_buffer", None)  # ZeRO-3
        if buf is not None:
            buf.zero_()
        for b in (getattr(opt, "accumulated_grads_in_cpu", None) or {}).values():  # ZeRO-2 + offload
            b.zero_()

    @property
    def partitioned(self) -> bool:
        return self.zero3

    def policy_module(self) -> nn.Module:
        return self.plain_policy

    def gathered(self, params, modify: bool = False):
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=0 if modify else None)

    def generate_kwargs(self) -> dict:
        # ZeRO-3: every rank keeps gathering parameters until all ranks are done generating
        return {"synced_gpus": True} if self.zero3 and self.env.world_size > 1 else {}

    def export_models(self) -> Models | None:
        """All ranks: gather the policy's full weights; rank 0 gets a plain CPU policy (θ + LoRA w, no
        shadow) to hand to models.export, the other ranks None."""
        sd: dict[str, torch.Tensor] = {}
        for name, p in self.plain_policy.named_parameters():
            with self.gathered([p]):
                if self.env.is_main:
                    sd[name] = p.data.detach().to("cpu", copy=True)
        if not self.env.is_main:
            return None
        from bridgerl.model.loading import load_model

        dtype = next(iter(sd.values())).dtype
        torch_state = torch.get_rng_state()
        plain = build_models(self.cfg, load_model(self.cfg.model.out_dir, dtype, device="cpu"), for_export=True)
        torch.set_rng_state(torch_state)
        missing, unexpected = plain.policy.load_state_dict(sd, strict=False)  # buffers and tied weights: as built
        missing = [k for k in missing if k in _param_dict(plain.policy)]
        if missing or unexpected:
            raise RuntimeError(f"export: gathered weights do not fit the policy (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        return plain

    def save(self, ckpt_dir: str | Path, step: int, state: dict, rng: dict, key: str, keep: int) -> Path:
        """All ranks: DeepSpeed's checkpoint `ckpt_dir/step-NNNNNN` + trainer state; the newest `keep` kept."""
        root = Path(ckpt_dir)
        tag = f"step-{step:06d}"
        meta = {"resume_key": key, "world_size": self.env.world_size, "strategy": self.cfg.train.distributed.strategy}
        from bridgerl.core.io import writing

        with writing(root / tag):  # a full disk names the checkpoint (torch's writers say "iostream error")
            self.ds.save_checkpoint(str(root), tag=tag, client_state={**meta, **state})
            torch.save(rng, root / tag / f"rng_rank{self.env.rank}.pt")
            if self.shadow_offload is not None:
                state = self._shadow_offload_state()  # all ranks (a sharded optimizer gathers its state on rank 0)
                if self.env.is_main:
                    torch.save(state, root / tag / SHADOW_FILE)
        barrier()
        if self.env.is_main:  # the completion marker, with the sha256 of every file of the checkpoint
            checkpoint.write_manifest(root / tag, key, step, name=DS_MARKER, world_size=meta["world_size"],
                                      strategy=meta["strategy"])
            for old in _ds_done(root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return root / tag

    def load(self, ckpt_dir: str | Path, key: str) -> tuple[dict, dict | None] | None:
        """All ranks: resume from DeepSpeed's `latest` checkpoint; returns (trainer state, this rank's RNG)."""
        self.ds.checkpoint_engine.load = _weights_only_load  # this engine's reads only
        root = Path(ckpt_dir)
        if not (root / "latest").exists():
            return None
        found = self._intact_tag(root)
        if isinstance(found, str):
            raise checkpoint.CheckpointError(found)
        tag, meta = found
        if meta["resume_key"] != key:
            raise ValueError(f"{root / tag}: checkpoint was written by a different configuration (resume key "
                             f"{meta['resume_key']} != {key}); remove {root} or run without --resume")
        if meta["world_size"] != self.env.world_size or meta["strategy"] != self.cfg.train.distributed.strategy:
            raise ValueError(f"{root / tag}: written by {meta['world_size']} processes with {meta['strategy']}, "
                             f"resumed with {self.env.world_size} and {self.cfg.train.distributed.strategy}")
        path, client = self.ds.load_checkpoint(str(root), tag=tag, load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"{root / tag}: DeepSpeed could not load this checkpoint")
        if self.shadow_offload is not None:
            sd = checkpoint.safe_load(root / tag / SHADOW_FILE)
            self.shadow_offload.load_state_dict(sd["shadow"])
            self.shadow_offload.optimizer.load_state_dict(sd["optimizer"])
        rng = root / tag / f"rng_rank{self.env.rank}.pt"
        return client, (checkpoint.safe_load(rng) if rng.exists() else None)

    def _intact_tag(self, root: Path) -> tuple[str, dict] | str:
        """Rank 0 verifies the complete checkpoints newest first (DeepSpeed's `latest` first) against their
        sha256 and tells the other ranks: (tag, its marker), or an error message when none is intact."""
        found: tuple[str, dict] | str = ""
        if self.env.is_main:
            latest = (root / "latest").read_text().strip()
            tags = [latest] + [p.name for p in reversed(_ds_done(root)) if p.name != latest]
            skipped = []
            for tag in tags:
                try:
                    found = (tag, checkpoint.verify(root / tag, name=DS_MARKER))
                    break
                except checkpoint.CheckpointError as e:
                    skipped.append(str(e))
            else:
                found = (f"no intact checkpoint in {root} to resume from: {skipped[0]}; remove it, or train "
                         f"without --resume")
            if skipped and not isinstance(found, str):
                print(f"bridgerl train: warning: {skipped[0]}; resuming from the older {root / found[0]}",
                      file=sys.stderr, flush=True)
        if self.env.world_size > 1:
            import torch.distributed as dist

            box = [found]
            dist.broadcast_object_list(box, src=0)
            found = box[0]
        return found

    def _shadow_offload_state(self) -> dict | None:
        """θ̂ and its optimizer state (whole on rank 0; None elsewhere when the optimizer is sharded)."""
        opt = self.shadow_offload.optimizer
        if hasattr(opt, "consolidate_state_dict"):  # ZeroRedundancyOptimizer: gather the shards on rank 0
            opt.consolidate_state_dict(to=0)
            if not self.env.is_main:
                return None
        return {"shadow": self.shadow_offload.state_dict(), "optimizer": opt.state_dict()}


def _ds_done(root: Path) -> list[Path]:
    """The complete DeepSpeed checkpoints under `root` (with their marker), oldest first."""
    return sorted((p for p in root.glob("step-*") if (p / DS_MARKER).exists()), key=lambda p: int(p.name[5:]))


def make_train_engine(cfg: Config, models: Models, optimizer: torch.optim.Optimizer, env: ProcEnv) -> TorchEngine:
    """DeepSpeed when train.distributed.strategy names a ZeRO stage, else plain torch."""
    if cfg.train.distributed.strategy == "none":
        return TorchEngine(cfg, models, optimizer, env)
    return DeepSpeedEngine(cfg, models, optimizer, env)
