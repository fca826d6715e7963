"""The update rules: what one iteration of each method computes, over an engine (bridgerl.train.engines).

GRPO's loss is `bridgerl.train.losses.grpo_loss`; SFT's objective is `losses.sft_objective`. A rule
computes losses with the models, calls `ctx.backward` (the engine's backward; BRIDGE: twice, accumulating) and
`engine.step()` (clip, optimizer step, zero the gradients), once per mini-batch and PPO epoch. Which
method uses which rule is the table in bridgerl.core.methods (`Method.update`).

BRIDGE (`bridge_update`, the spec's steps 3–5): one backward of −[(1−λ)J_SFT(θ,w) + λJ_RL(θ,w)] through
the policy, one of −J_RL(θ̂,w) through the shadow with a hook scaling w's gradient by −λ; one optimizer
step then applies α to θ and θ̂ and β to w:
    θ.grad = −[(1−λ)∇θ J_SFT(θ,w) + λ∇θ J_RL(θ,w)]
    θ̂.grad = −∇θ̂ J_RL(θ̂,w)
    w.grad = −[(1−λ)∇w J_SFT(θ,w) + λ(∇w J_RL(θ,w) − ∇w J_RL(θ̂,w))]

Conventions of every RL term (policy, shadow, behaviour and reference log-probs):
- log-probs of softmax(logits / T) with T the sampling temperature (the distribution rollouts came from);
- computed in eval mode (no dropout): the policy and shadow passes must see the same function, or the
  cooperative term ∇w J_RL(θ,w) − ∇w J_RL(θ̂,w) is dropout noise (it is exactly 0 at θ̂ = θ). Dropout
  (train.lora.dropout, the base model's) applies to the SFT passes only.
- the behaviour policy is π(θ, w) at rollout time: its log-probs are `old_logp` when the batch is
  used for several updates, else the update's own forward of π(θ, w) (detached).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from bridgerl.config import Config
from bridgerl.core.methods import METHODS, RULES
from bridgerl.train.batches import SeqBatch, assemble, micro_batches, split
from bridgerl.train.losses import grpo_loss, masked_mean, sft_objective, token_logprobs
from bridgerl.train.models import Models
from bridgerl.train.parallel import all_reduce, is_distributed


@dataclass
class Ctx:
    """What a rule works with: the models, the engine that backpropagates and steps, the configuration."""

    models: Models
    engine: object  # bridgerl.train.engines.TorchEngine or DeepSpeedEngine
    cfg: Config
    trained_tokens: int = 0  # tokens through forward+backward passes on this process, cumulative

    @property
    def method(self):
        return METHODS[self.cfg.train.method]

    def backward(self, loss: torch.Tensor, batch: SeqBatch) -> None:
        """The engine's backward of `loss`, computed on `batch` (counted in `trained_tokens`)."""
        self.engine.backward(loss)
        self.trained_tokens += batch.n_tokens


@contextlib.contextmanager
def eval_mode(*models):
    """Dropout off for the enclosed forwards (restored afterwards; autograd keeps its graph).

    Gradient checkpointing stays on: transformers only checkpoints a decoder layer in train mode, so the
    layers themselves (not their submodules, where dropout lives) keep their train flag while grad is on."""
    models = [m for m in models if m is not None]
    modules = [mod for m in models for mod in m.modules()]
    was = [mod.training for mod in modules]
    for m in models:
        m.eval()
    if torch.is_grad_enabled():
        for mod in modules:
            if getattr(mod, "gradient_checkpointing", False) is True and hasattr(mod, "_gradient_checkpointing_func"):
                mod.training = True
    try:
        yield
    finally:
        for mod, w in zip(modules, was):
            mod.training = w


def logprob_kwargs(cfg: Config) -> dict:
    """How token_logprobs computes: chunked output layer, packed rows (train.logprob_chunk_tokens, padding_free)."""
    return {"chunk_tokens": cfg.train.logprob_chunk_tokens, "pack": cfg.train.padding_free}


def _rl_logprobs(model, batch: SeqBatch, cfg: Config, with_entropy: bool = False):
    with eval_mode(model):
        return token_logprobs(model, batch.input_ids, batch.attention_mask, with_entropy=with_entropy,
                              temperature=cfg.train.grpo.temperature, mask=batch.mask, **logprob_kwargs(cfg))


def rl_logprobs(model, batch: SeqBatch, cfg: Config, with_entropy: bool = False):
    """Log-probs of an RL term: eval mode, at the sampling temperature. Without grad (behaviour and
    reference log-probs of a whole batch) in micro-batches of train.micro_batch_tokens."""
    t = cfg.train
    if torch.is_grad_enabled() or t.micro_batch_tokens is None or len(batch) == 0:
        return _rl_logprobs(model, batch, cfg, with_entropy)
    logps, ents = [], []
    for mic in micro_split(cfg, batch, token_level=True):
        lp, en = _rl_logprobs(model, mic.batch, cfg, with_entropy)
        logps.append((mic.idx, lp))
        ents.append((mic.idx, en))
    like = logps[0][1].new_zeros(batch.mask.shape)
    return assemble(logps, like), (assemble(ents, like) if with_entropy else None)


def _dp_weight(x: torch.Tensor, mb: SeqBatch) -> torch.Tensor:
    """A part's loss weight: rank (bridgerl.train.parallel.weigh) x micro-batch share (batches.micro_batches);
    exactly 1 for a whole batch in one process, absent in unit tests."""
    w = mb.extras.get("loss_scale")
    return x if w is None else x * w[0]


def grpo_term(model, mb: SeqBatch, cfg: Config, with_entropy: bool = False, old_logp: torch.Tensor | None = None):
    """−J_RL of `model` on the rollouts `mb` (GRPO's loss), its log-probs and entropy."""
    g = cfg.train.grpo
    logp, ent = rl_logprobs(model, mb, cfg, with_entropy=with_entropy)
    if old_logp is None:
        old_logp = mb.extras["old_logp"] if "old_logp" in mb.extras else logp.detach()
    out = grpo_loss(logp, old_logp, mb.extras["advantages"], mb.mask, g.clip_eps, g.clip_eps_high,
                    mb.extras.get("ref_logp"), g.kl_coef, g.loss_agg)
    out.loss = _dp_weight(out.loss, mb)
    return out, logp, ent


def sft_term(model, mb: SeqBatch, cfg: Config | None = None) -> torch.Tensor:
    """J_SFT of `model` on the demonstrations `mb` (train mode: dropout applies here)."""
    kw = logprob_kwargs(cfg) if cfg is not None else {}
    logp, _ = token_logprobs(model, mb.input_ids, mb.attention_mask, mask=mb.mask, **kw)
    return _dp_weight(sft_objective(logp, mb.mask), mb)


def _minibatches(ctx: Ctx, rl: SeqBatch, sft: SeqBatch | None = None):
    """(rl, sft) mini-batch pairs for every PPO epoch (config validation guarantees none is empty)."""
    g = ctx.cfg.train.grpo
    n = g.mini_batches
    for _ in range(g.ppo_epochs):
        rls = split(rl, n)
        sfts = split(sft, n) if sft is not None else [None] * len(rls)
        assert len(rls) == len(sfts), "every RL mini-batch needs its SFT mini-batch"
        yield from zip(rls, sfts)


def micro_split(cfg: Config, batch: SeqBatch, token_level: bool):
    """A mini-batch's micro-batches (train.micro_batch_tokens): their losses sum to the mini-batch's.
    Every rank gets as many as the rank that needs the most: under ZeRO each pass has collectives."""
    t = cfg.train
    mbs = micro_batches(batch, t.micro_batch_tokens, token_level, t.padding_free)
    if t.micro_batch_tokens is not None and is_distributed():
        n = int(all_reduce([float(len(mbs))], "max")[0])
        if n > len(mbs):
            mbs = micro_batches(batch, t.micro_batch_tokens, token_level, t.padding_free, count=n)
    return mbs


def _micro(ctx: Ctx, batch: SeqBatch, rl: bool):
    token_level = (not rl) or ctx.cfg.train.grpo.loss_agg == "token"
    return micro_split(ctx.cfg, batch, token_level)


class _Stats:
    """A mini-batch's metrics from its micro-batches: weighted losses add up; means are weighted by share."""

    def __init__(self):
        self.v: dict[str, float] = {}

    def add(self, share: float = 1.0, **values) -> None:
        for k, x in values.items():
            self.v[k] = self.v.get(k, 0.0) + share * float(x)


def _rl_stats(st: _Stats, mic, out, ent) -> None:
    st.add(rl_loss=out.loss.item())
    st.add(mic.share, kl=out.kl.item(), clip_frac=out.clip_frac.item())
    if ent is not None:
        st.add(mic.share, entropy=masked_mean(ent, mic.batch.mask).item())


# ------------------------------------------------------------------------------------------------
# the rules (each backward is one micro-batch's; engine.step() once per mini-batch)
# ------------------------------------------------------------------------------------------------
def sft_update(ctx: Ctx, rl: SeqBatch | None, sft: SeqBatch, lam: float | None = None) -> dict:
    st = _Stats()
    for mic in _micro(ctx, sft, rl=False):
        j = sft_term(ctx.models.policy, mic.batch, ctx.cfg)
        ctx.backward(-j, mic.batch)
        st.add(sft_nll=-j.item())
    ctx.engine.step()
    return {"sft_nll": st.v["sft_nll"], "loss": st.v["sft_nll"]}


def rl_update(ctx: Ctx, rl: SeqBatch, sft: SeqBatch | None = None, lam: float | None = None) -> dict:
    stats = {}
    for mb, _ in _minibatches(ctx, rl):
        st = _Stats()
        for mic in _micro(ctx, mb, rl=True):
            out, _, ent = grpo_term(ctx.models.policy, mic.batch, ctx.cfg, with_entropy=True)
            ctx.backward(out.loss, mic.batch)
            _rl_stats(st, mic, out, ent)
        ctx.engine.step()
        stats = {**st.v, "loss": st.v["rl_loss"]}
    return stats


def alternating_update(ctx: Ctx, rl: SeqBatch, sft: SeqBatch, lam: float | None = None) -> dict:
    """One GRPO update, then one SFT step on the same weights."""
    stats = rl_update(ctx, rl)
    stats["sft_nll"] = sft_update(ctx, None, sft)["sft_nll"]
    return stats


def mixed_update(ctx: Ctx, rl: SeqBatch, sft: SeqBatch, lam: float | None = None) -> dict:
    """L = (1−μ) L_GRPO + μ L_SFT per mini-batch (CHORD-style)."""
    mu = ctx.cfg.train.mixed_mu
    stats = {}
    for mb, smb in _minibatches(ctx, rl, sft):
        st = _Stats()
        for mic in _micro(ctx, mb, rl=True):
            out, _, ent = grpo_term(ctx.models.policy, mic.batch, ctx.cfg, with_entropy=True)
            ctx.backward((1 - mu) * out.loss, mic.batch)
            _rl_stats(st, mic, out, ent)
        for mic in _micro(ctx, smb, rl=False):
            j = sft_term(ctx.models.policy, mic.batch, ctx.cfg)
            ctx.backward(-mu * j, mic.batch)
            st.add(sft_nll=-j.item())
        ctx.engine.step()
        stats = {**st.v, "loss": (1 - mu) * st.v["rl_loss"] + mu * st.v["sft_nll"]}
    return stats


def _with_old(rl: SeqBatch, old_logp: torch.Tensor | None) -> SeqBatch:
    if old_logp is None:
        return rl
    return SeqBatch(rl.input_ids, rl.attention_mask, rl.mask, {**rl.extras, "old_logp": old_logp})


def bridge_backward(ctx: Ctx, rl: SeqBatch, sft: SeqBatch, lam: float, old_logp: torch.Tensor | None = None) -> dict:
    """Accumulate the BRIDGE gradients (descent form, module docstring) into .grad of θ, θ̂ and w, one
    backward per micro-batch: −(1−λ)J_SFT(θ,w) per SFT micro-batch, then per RL micro-batch λ(−J_RL(θ,w))
    and −J_RL(θ̂,w) (w's gradient of the latter scaled by −λ). Without the upper level (a method with no
    shadow: bridge_frozen_w, bridge_single_level) the shadow term is skipped: w, if it trains, descends the
    lower level's objective with θ."""
    m, cfg = ctx.models, ctx.cfg
    st = _Stats()
    for mic in _micro(ctx, sft, rl=False):
        j = sft_term(m.policy, mic.batch, cfg)
        ctx.backward(-(1 - lam) * j, mic.batch)
        st.add(sft_nll=-j.item())
    with m.shadow_pass():  # θ̂ on the device for all its micro-batches (offloaded: brought in once)
        for mic in _micro(ctx, _with_old(rl, old_logp), rl=True):
            mb = mic.batch
            rl_out, logp, ent = grpo_term(m.policy, mb, cfg, with_entropy=True)
            ctx.backward(lam * rl_out.loss, mic.batch)
            _rl_stats(st, mic, rl_out, ent)
            if m.shadow is not None:
                behaviour = mb.extras.get("old_logp", logp.detach())
                handles = [p.register_hook(lambda g, lam=lam: -lam * g) for p in m.lora if p.requires_grad]
                try:
                    sh_out, _, _ = grpo_term(m.shadow, mb, cfg, old_logp=behaviour)
                    ctx.backward(sh_out.loss, mic.batch)
                finally:
                    for h in handles:
                        h.remove()
                st.add(shadow_rl_loss=sh_out.loss.item())
                st.add(mic.share, shadow_ratio=sh_out.ratio_mean.item())
    stats = dict(st.v)
    stats["loss"] = (1 - lam) * stats["sft_nll"] + lam * stats["rl_loss"]
    if m.shadow is not None:
        # cooperative gain J_RL(θ,w) − J_RL(θ̂,w) on the same rollouts (θ̂ term importance-weighted)
        stats["coop_gain"] = stats["shadow_rl_loss"] - stats["rl_loss"]
    return stats


def shadow_only_backward(ctx: Ctx, rl: SeqBatch, old_logp: torch.Tensor) -> float:
    """−J_RL(θ̂, w) into θ̂.grad only (w held fixed), behaviour policy π(θ, w): an extra shadow step."""
    m = ctx.models
    req = [p.requires_grad for p in m.lora]
    for p in m.lora:
        p.requires_grad_(False)
    total = 0.0
    try:
        with m.shadow_pass():
            for mic in _micro(ctx, _with_old(rl, old_logp), rl=True):
                out, _, _ = grpo_term(m.shadow, mic.batch, ctx.cfg)
                ctx.backward(out.loss, mic.batch)
                total += out.loss.item()
    finally:
        for p, r in zip(m.lora, req):
            p.requires_grad_(r)
    return total


def bridge_update(ctx: Ctx, rl: SeqBatch, sft: SeqBatch, lam: float) -> dict:
    """Per mini-batch: k−1 shadow-only steps (train.bridge.shadow_steps = k), then the joint step."""
    k = ctx.cfg.train.bridge.shadow_steps if ctx.models.shadow is not None else 1
    stats = {}
    for mb, smb in _minibatches(ctx, rl, sft):
        old = mb.extras.get("old_logp")
        if k > 1 and old is None:  # one update per rollout batch: π(θ, w) now is the behaviour policy
            with torch.no_grad():
                old = rl_logprobs(ctx.models.policy, mb, ctx.cfg)[0]
        for _ in range(k - 1):
            shadow_only_backward(ctx, mb, old)
            ctx.engine.step()
        stats = bridge_backward(ctx, mb, smb, lam, old_logp=old)
        ctx.engine.step()
    return stats


def lam_at(cfg: Config, step: int, total: int, epoch: int) -> float:
    """λ at iteration `step` of `total` (epoch `epoch` of the RL prompts): train.bridge.lam_schedule."""
    b = cfg.train.bridge
    if b.lam_schedule == "constant":
        return b.lam
    if b.lam_schedule == "linear":
        frac = step / max(1, total - 1)
        return b.lam_start + (b.lam - b.lam_start) * frac
    return min(b.lam, b.lam_start + epoch * b.lam_epoch_increment)


UPDATES = {"sft": sft_update, "rl": rl_update, "alternating": alternating_update, "mixed": mixed_update,
           "bridge": bridge_update}
# each rule's computation here, its needs and passes in bridgerl.core.methods.RULES: the same names
assert set(UPDATES) == set(RULES), f"update rules without a declaration or a computation: {set(UPDATES) ^ set(RULES)}"
