"""Memory and compute at scale (issue 12), checked in float64 against the plain computation:
chunked log-probs/entropy == full logits; micro-batched + accumulated gradients == the whole batch's for
every update rule; packed (padding-free) and length-bucketed rows == padded ones; gradient checkpointing
leaves gradients unchanged (and does recompute); the offloaded shadow's updates == the in-memory one's."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_cfg

from bridgerl.core.methods import METHODS
from bridgerl.train.batches import collate, micro_batches, padding_fraction
from bridgerl.train.engines import TorchEngine
from bridgerl.train.losses import token_logprobs
from bridgerl.train.models import build_models
from bridgerl.train.parallel import ProcEnv
from bridgerl.train.updates import UPDATES, Ctx

VOCAB = 97


def _base(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, tie_word_embeddings=tie, attn_implementation="sdpa")
    return LlamaForCausalLM(c).double()


def _batch(gen: torch.Generator, n: int, prompt: tuple[int, int], response: tuple[int, int]):
    """Rows of very different lengths (so padding, trimming and packing all matter)."""
    def lens(lo, hi):
        return torch.randint(lo, hi + 1, (n,), generator=gen).tolist()
    ps = [torch.randint(3, VOCAB, (k,), generator=gen).tolist() for k in lens(*prompt)]
    rs = [torch.randint(3, VOCAB, (k,), generator=gen).tolist() for k in lens(*response)]
    return collate(ps, rs, pad_id=0)


def _params(module):
    return [p for p in module.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------------
# chunked and packed log-probs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("pack", [False, True])
def test_chunked_logprobs_equal_full_logits(tmp_path, lora, pack):
    """Log-probs, entropy and gradients from the chunked output layer (3 positions at a time, only at
    response positions; packed rows or padded) equal those of the full [B, L, V] logits."""
    model = _base()
    if lora:
        cfg = make_cfg(tmp_path, "train.method=bridge", "train.lora.dropout=0.0")
        model = build_models(cfg, model).policy
        with torch.no_grad():  # w ≠ 0
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    gen = torch.Generator().manual_seed(1)
    b = _batch(gen, 5, (2, 6), (1, 9))
    sel = b.mask.bool()
    weights = torch.randn(b.mask.shape, generator=gen, dtype=torch.float64)

    def run(**kw):
        model.zero_grad(set_to_none=True)
        logp, ent = token_logprobs(model, b.input_ids, b.attention_mask, with_entropy=True, temperature=0.7, **kw)
        (logp * weights * b.mask).sum().backward()
        return logp, ent, [p.grad.clone() for p in _params(model)]

    full_lp, full_ent, full_g = run()
    lp, ent, g = run(mask=b.mask, chunk_tokens=3, pack=pack)
    torch.testing.assert_close(lp[sel], full_lp[sel], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ent[sel], full_ent[sel], rtol=1e-12, atol=1e-12)
    assert torch.all(lp[~sel] == 0) and torch.all(ent[~sel] == 0)
    for a, e in zip(g, full_g):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    # the head is applied per chunk: never more than 3 rows of logits at a time
    head, rows = model.get_output_embeddings(), []
    h = head.register_forward_hook(lambda mod, inp, out: rows.append(out.shape[0]))
    with torch.no_grad():
        token_logprobs(model, b.input_ids, b.attention_mask, mask=b.mask, chunk_tokens=3, pack=pack)
    h.remove()
    assert max(rows) == 3 and sum(rows) == int(b.mask.sum())


# ------------------------------------------------------------------------------------------------
# micro-batches with gradient accumulation, for every update rule
# ------------------------------------------------------------------------------------------------
class RecordingEngine(TorchEngine):
    """A TorchEngine that records the gradients of every parameter group at each step."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.grads: list[list[torch.Tensor]] = []

    def step(self) -> None:
        self.grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                           for g in self.optimizer.param_groups for p in g["params"]])
        super().step()


def _update(tmp_path, base, method: str, *overrides: str, seed: int = 0):
    """One iteration of `method`'s rule on fixed random batches, in float64; returns its gradients and
    final weights (two mini-batches: the second one's gradient depends on the first step)."""
    cfg = make_cfg(tmp_path, f"train.method={method}", "train.optimizer=sgd", "train.max_grad_norm=null",
                   "train.lr_theta=0.05", "train.lr_w=0.05", "train.grpo.kl_coef=0.1", "train.lora.dropout=0.0",
                   "train.grpo.mini_batches=2", "train.prompt_batch=4", "train.demo_batch=4",
                   "train.grpo.temperature=0.8", *overrides)
    torch.manual_seed(seed)
    m = build_models(cfg, copy.deepcopy(base))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.shadow_theta:
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for p in m.lora:
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    rl = _batch(gen, 12, (2, 7), (1, 12))
    sft = _batch(gen, 4, (2, 6), (3, 10))
    rl.extras["advantages"] = torch.randn(len(rl), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        logits = m.policy(input_ids=rl.input_ids, attention_mask=rl.attention_mask).logits[:, :-1] / 0.8
        lp = torch.log_softmax(logits, -1).gather(-1, rl.input_ids[:, 1:, None]).squeeze(-1)
    rl.extras["old_logp"] = lp + 0.2 * torch.randn(lp.shape, generator=gen, dtype=lp.dtype)
    rl.extras["ref_logp"] = lp + 0.2 * torch.randn(lp.shape, generator=gen, dtype=lp.dtype)
    opt = torch.optim.SGD([g for g in m.param_groups(cfg) if g["params"]], lr=0.05)
    eng = RecordingEngine(cfg, m, opt, ProcEnv())
    spec = METHODS[method]
    stats = UPDATES[spec.update](Ctx(m, eng, cfg), rl if spec.rl else None, sft if spec.sft else None, 0.4)
    weights = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    return eng.grads, weights, stats


PLAIN = ("train.logprob_chunk_tokens=null",)  # the reference: full logits, whole mini-batches


@pytest.mark.parametrize("method", ["sft", "rl_zero", "mixed", "bridge", "bridge_frozen_w"])
@pytest.mark.parametrize("variant", [
    ("train.micro_batch_tokens=20",),
    ("train.micro_batch_tokens=20", "train.padding_free=true", "train.logprob_chunk_tokens=5"),
    ("train.micro_batch_tokens=1", "train.grpo.loss_agg=sequence"),
])
def test_micro_batches_accumulate_to_the_batch_gradient(tmp_path, method, variant):
    """Every update rule: micro-batches of ≤ 20 positions (padded or packed), or one sequence each with
    sequence-level aggregation, accumulate to exactly the whole mini-batch's gradients of θ, θ̂ and w."""
    base = _base()
    agg = [v for v in variant if "loss_agg" in v]
    ref_g, ref_w, ref_stats = _update(tmp_path, base, method, *PLAIN, *agg)
    got_g, got_w, got_stats = _update(tmp_path, base, method, *variant)
    assert len(ref_g) == len(got_g) >= 1
    assert any(g.abs().max() > 1e-6 for step in ref_g for g in step)
    for a_step, b_step in zip(got_g, ref_g):
        for a, b in zip(a_step, b_step):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(got_w, ref_w):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for k in ("loss", "rl_loss", "sft_nll", "kl", "coop_gain"):
        if k in ref_stats:
            assert got_stats[k] == pytest.approx(ref_stats[k], rel=1e-8, abs=1e-12), k


def test_micro_batches_are_bounded_and_bucketed():
    gen = torch.Generator().manual_seed(3)
    b = _batch(gen, 16, (2, 8), (1, 30))
    mbs = micro_batches(b, 64, token_level=True)
    assert sorted(int(i) for m in mbs for i in m.idx) == list(range(16))
    lens = b.lengths
    for m in mbs:
        assert m.batch.input_ids.shape[1] == int(lens[m.idx].max())  # trimmed to its longest row
        assert m.batch.input_ids.numel() <= 64 or len(m.batch) == 1
    assert sum(m.share for m in mbs) == pytest.approx(1.0)
    packed = micro_batches(b, 64, token_level=True, packed=True)
    assert all(int(m.batch.lengths.sum()) <= 64 or len(m.batch) == 1 for m in packed)
    assert len(packed) <= len(mbs)
    # a ZeRO rank that needs fewer micro-batches than another splits its largest ones
    more = micro_batches(b, 64, token_level=True, count=len(mbs) + 3)
    assert len(more) == len(mbs) + 3 and sum(m.share for m in more) == pytest.approx(1.0)
    assert sorted(int(i) for m in more for i in m.idx) == list(range(16))
    # bucketing computes less padding than one padded block; packing none
    assert padding_fraction(b, 64) < padding_fraction(b) and padding_fraction(b, packed=True) == 0.0


# ------------------------------------------------------------------------------------------------
# gradient checkpointing
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bridge", "rl_zero"])
def test_gradient_checkpointing_keeps_gradients_and_recomputes(tmp_path, method):
    """BRIDGE (SFT passes in train mode, RL passes with dropout off) and GRPO: same gradients with
    train.gradient_checkpointing, and the decoder layers really run again in the backward pass."""
    base = _base()
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    # a pre-hook on each layer's MLP: inside the checkpointed region on every transformers version (5.19
    # checkpoints the layer's __call__, newer ones wrap its forward, so replacing `forward` would switch
    # checkpointing off); a pre-hook, since torch stops a recomputation once the saved tensors are back
    for layer in base.model.layers:
        layer.mlp.register_forward_pre_hook(count)

    def run(*overrides):
        calls["n"] = 0
        out = _update(tmp_path, base, method, *overrides)
        return out, calls["n"]

    (ref_g, ref_w, _), n_plain = run()
    (got_g, got_w, _), n_ckpt = run("train.gradient_checkpointing=true")
    for a_step, b_step in zip(got_g, ref_g):
        for a, b in zip(a_step, b_step):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # every pass with grad recomputes its layers (forwards without grad: _update's behaviour log-probs)
    passes = {"bridge": 3, "rl_zero": 1}[method] * 2  # (SFT, policy RL, shadow RL) or policy RL, x 2 mini-batches
    assert n_ckpt - n_plain == passes * base.config.num_hidden_layers


# ------------------------------------------------------------------------------------------------
# the offloaded shadow
# ------------------------------------------------------------------------------------------------
def test_offloaded_shadow_matches_the_in_memory_shadow(tmp_path):
    """AdamW, clipping on, two mini-batches, shadow_steps 2, micro-batches: θ, θ̂ and w after the update
    are exactly those of the in-memory shadow; between passes the shadow module holds no weights, and
    θ̂, its gradient and its AdamW moments are the host tensors (separate storage from the module's)."""
    from bridgerl.train.models import load_shadow_state, shadow_state

    base = _base()
    over = ("train.optimizer=adamw", "train.max_grad_norm=0.05", "train.bridge.shadow_steps=2",
            "train.micro_batch_tokens=30")

    def run(offload: bool):
        cfg = make_cfg(tmp_path, "train.method=bridge", "train.lr_theta=0.01", "train.lr_w=0.01",
                       "train.grpo.kl_coef=0.1", "train.lora.dropout=0.0", "train.grpo.mini_batches=2",
                       "train.prompt_batch=4", "train.demo_batch=4", *over,
                       f"train.bridge.shadow_offload={str(offload).lower()}")
        torch.manual_seed(0)
        m = build_models(cfg, copy.deepcopy(base))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in m.shadow_theta:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        rl, sft = _batch(gen, 12, (2, 7), (1, 12)), _batch(gen, 4, (2, 6), (3, 10))
        rl.extras["advantages"] = torch.randn(len(rl), generator=gen, dtype=torch.float64)
        opt = torch.optim.AdamW([g for g in m.param_groups(cfg) if g["params"]], lr=0.01)
        eng = TorchEngine(cfg, m, opt, ProcEnv())
        for _ in range(2):
            UPDATES["bridge"](Ctx(m, eng, cfg), rl, sft, 0.4)
        return m, opt, eng

    ref, ref_opt, ref_eng = run(False)
    off, off_opt, off_eng = run(True)
    assert off_eng.grad_norm == pytest.approx(ref_eng.grad_norm, rel=1e-12) and ref_eng.grad_norm > 0.05
    for a, b in ((off.theta, ref.theta), (off.shadow_theta, ref.shadow_theta), (off.lora, ref.lora)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x.detach(), y.detach(), rtol=0, atol=0)
    moved = max((x.detach() - y).abs().max().item() for x, y in zip(off.shadow_theta, base.parameters()))
    assert moved > 1e-4
    # the module is empty between passes; the optimizer's θ̂ are other tensors than the module's
    names = {n for n, _ in off.shadow.named_parameters() if "lora_" not in n}
    assert all(p.numel() == 0 for n, p in off.shadow.named_parameters() if n in names)
    module_ptrs = {p.data_ptr() for p in off.shadow.parameters()}
    assert not any(h.data_ptr() in module_ptrs for h in off.shadow_theta)
    moments = [off_opt.state[h]["exp_avg"] for h in off.shadow_theta]
    assert all(mo.device.type == "cpu" and mo.abs().max() > 0 for mo in moments)
    # and a checkpoint of the shadow round-trips through the host copy
    sd = shadow_state(off)
    assert set(sd) == names
    torch.testing.assert_close(sd, shadow_state(ref))
    with torch.no_grad():
        for h in off.shadow_theta:
            h.zero_()
    load_shadow_state(off, sd)
    torch.testing.assert_close(shadow_state(off), shadow_state(ref))
