"""The trainer against the spec: BRIDGE's update equals the three formulas, GRPO matches a hand
computation, each method moves exactly the parameters it should, and resume is exact."""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import FAST, REPO, make_cfg, path_overrides

from bridgerl import rewards
from bridgerl.core.methods import METHOD_NAMES
from bridgerl.train.batches import collate
from bridgerl.train.engines import TorchEngine
from bridgerl.train.losses import group_advantages, grpo_loss, sft_objective, token_logprobs
from bridgerl.train.models import build_models
from bridgerl.train.parallel import ProcEnv
from bridgerl.train.trainer import Trainer, make_trainer
from bridgerl.train.updates import Ctx, bridge_update


def _even_length(output: str, answer: str, timeout_s: float = 5.0) -> bool:
    """A test verifier that any model satisfies about half the time, so every group has signal."""
    return len(output) % 2 == 0


rewards.register("test_even_length", _even_length)


# ------------------------------------------------------------------------------------------------
# GRPO loss vs a hand computation
# ------------------------------------------------------------------------------------------------
def test_grpo_loss_matches_hand_computation():
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]])
    old = torch.tensor([[-1.3, -0.5, -1.5], [-0.3, -0.2, -0.7]])
    ref = torch.tensor([[-1.1, -0.4, -2.2], [-0.5, -1.0, -0.9]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.5, -0.8])
    eps, beta = 0.2, 0.05
    # by hand, token by token
    total, n = 0.0, 0
    for b in range(2):
        for t in range(3):
            if mask[b, t] == 0:
                continue
            r = math.exp(logp[b, t] - old[b, t])
            a = adv[b].item()
            surr = min(r * a, max(min(r, 1 + eps), 1 - eps) * a)
            d = (ref[b, t] - logp[b, t]).item()
            kl = math.exp(d) - d - 1
            total += -surr + beta * kl
            n += 1
    expected = total / n
    # the case exercises both clip sides: ratio e^0.3 > 1.2 with A > 0, e^-1 < 0.8 with A < 0
    out = grpo_loss(logp, old, adv, mask, clip_eps=eps, ref_logp=ref, kl_coef=beta, agg="token")
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert 0 < out.clip_frac.item() < 1
    # sequence-level aggregation: mean of per-sequence token means
    seq = grpo_loss(logp, old, adv, mask, clip_eps=eps, ref_logp=ref, kl_coef=beta, agg="sequence")
    assert seq.loss.item() != pytest.approx(out.loss.item())


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 3, scale=False)
    assert torch.allclose(a, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]))
    s = group_advantages(r, 3, scale=True)
    assert torch.allclose(s[:3], a[:3] / torch.tensor([1.0, 0.0, 0.0]).std(), atol=1e-5)
    assert torch.all(s[3:] == 0)


# ------------------------------------------------------------------------------------------------
# BRIDGE update == the spec's three formulas
# ------------------------------------------------------------------------------------------------
def _random_batches(tok_vocab: int, gen: torch.Generator):
    def seqs(n, lp, lr):
        return ([torch.randint(3, tok_vocab, (lp,), generator=gen).tolist() for _ in range(n)],
                [torch.randint(3, tok_vocab, (lr + i,), generator=gen).tolist() for i in range(n)])
    rl = collate(*seqs(4, 5, 4), pad_id=0)
    sft = collate(*seqs(3, 4, 6), pad_id=0)
    return rl, sft


def _float64_update_case(tiny_project, method: str, seed: int, temperature: float):
    """One update's inputs in float64 for `method`: random λ, α, β; θ̂ ≠ θ (if it has a shadow) and w ≠ 0
    so that every term of the formulas matters; random RL and SFT batches with behaviour log-probs off
    the policy's, the reference's and random advantages; and the objectives J_RL, J_SFT written out (log
    softmax(logits / T) at the sampling temperature T). Returns (cfg, models, rl, sft, lam, alpha, beta,
    j_rl, j_sft)."""
    from bridgerl.model.loading import load_model

    rng = random.Random(seed)
    lam, alpha, beta = rng.uniform(0.05, 0.95), rng.uniform(1e-3, 1e-1), rng.uniform(1e-3, 1e-1)
    cfg = make_cfg(tiny_project, f"train.method={method}", "train.optimizer=sgd", "train.max_grad_norm=null",
                   f"train.lr_theta={alpha}", f"train.lr_w={beta}", "train.grpo.kl_coef=0.05",
                   "train.lora.dropout=0.0", f"train.grpo.temperature={temperature}")
    torch.manual_seed(seed)
    base = load_model(str(tiny_project / "models" / "base"), dtype=torch.float64)
    m = build_models(cfg, base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.shadow_theta:
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for p in m.lora:
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    rl, sft = _random_batches(base.config.vocab_size, gen)
    T = temperature
    with torch.no_grad():
        pol_logp = token_logprobs(m.policy, rl.input_ids, rl.attention_mask, temperature=T)[0]
        rl.extras["old_logp"] = pol_logp + 0.3 * torch.randn(pol_logp.shape, generator=gen, dtype=pol_logp.dtype)
        rl.extras["ref_logp"] = token_logprobs(m.ref, rl.input_ids, rl.attention_mask, temperature=T)[0]
    rl.extras["advantages"] = torch.randn(len(rl), generator=gen, dtype=torch.float64)
    g = cfg.train.grpo

    def j_rl(model):  # log softmax(logits / T), written out
        logits = model(input_ids=rl.input_ids, attention_mask=rl.attention_mask).logits[:, :-1] / T
        logp = torch.log_softmax(logits, -1).gather(-1, rl.input_ids[:, 1:, None]).squeeze(-1)
        return -grpo_loss(logp, rl.extras["old_logp"], rl.extras["advantages"], rl.mask, g.clip_eps,
                          g.clip_eps_high, rl.extras["ref_logp"], g.kl_coef, g.loss_agg).loss

    def j_sft(model):
        return sft_objective(token_logprobs(model, sft.input_ids, sft.attention_mask)[0], sft.mask)

    return cfg, m, rl, sft, lam, alpha, beta, j_rl, j_sft


def _sgd_update_matches(cfg, m, rl, sft, lam, alpha, expected) -> dict:
    """One bridge_update under SGD (the group rates α, β from cfg); each (params, expected) pair equal in
    float64. Returns the update's stats."""
    opt = torch.optim.SGD([g for g in m.param_groups(cfg) if g["params"]], lr=alpha)
    stats = bridge_update(Ctx(m, TorchEngine(cfg, m, opt, ProcEnv()), cfg), rl, sft, lam)
    for got, exp in expected:
        for p, e in zip(got, exp):
            torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    return stats


@pytest.mark.parametrize("seed,temperature", [(0, 1.0), (1, 0.7), (2, 1.3)])
def test_bridge_update_equals_formulas(tiny_project, seed, temperature):
    """float64: θ, θ̂ and w after one BRIDGE update equal the spec's three formulas, with the RL terms
    of softmax(logits / T) at the sampling temperature T."""
    cfg, m, rl, sft, lam, alpha, beta, j_rl, j_sft = _float64_update_case(tiny_project, "bridge", seed, temperature)
    m.policy.eval(), m.shadow.eval()
    lower = (1 - lam) * j_sft(m.policy) + lam * j_rl(m.policy)
    g_theta = torch.autograd.grad(lower, m.theta, retain_graph=True)
    g_w_lower = torch.autograd.grad(lower, m.lora)
    j_shadow = j_rl(m.shadow)
    g_shadow = torch.autograd.grad(j_shadow, m.shadow_theta, retain_graph=True)
    g_w_shadow = torch.autograd.grad(j_shadow, m.lora)
    expect_theta = [p.detach() + alpha * gr for p, gr in zip(m.theta, g_theta)]
    expect_shadow = [p.detach() + alpha * gr for p, gr in zip(m.shadow_theta, g_shadow)]
    expect_w = [p.detach() + beta * (a - lam * b) for p, a, b in zip(m.lora, g_w_lower, g_w_shadow)]
    _sgd_update_matches(cfg, m, rl, sft, lam, alpha,
                        ((m.theta, expect_theta), (m.shadow_theta, expect_shadow), (m.lora, expect_w)))
    # and the update was not trivial: w moved by the cooperative term
    assert any(gs.abs().max() > 1e-6 for gs in g_w_shadow)


@pytest.mark.parametrize("seed,temperature", [(0, 1.0), (3, 0.7)])
def test_single_level_update_equals_formulas(tiny_project, seed, temperature):
    """float64: the upper-level ablation (bridge_single_level) moves θ and w by the lower level's gradient
    alone, θ' = θ + α∇θ L, w' = w + β∇w L with L = (1−λ)J_SFT(θ,w) + λJ_RL(θ,w), and builds no shadow."""
    cfg, m, rl, sft, lam, alpha, beta, j_rl, j_sft = _float64_update_case(
        tiny_project, "bridge_single_level", seed, temperature)
    assert m.shadow is None and m.lora and all(p.requires_grad for p in m.lora)
    m.policy.eval()
    lower = (1 - lam) * j_sft(m.policy) + lam * j_rl(m.policy)
    g_theta = torch.autograd.grad(lower, m.theta, retain_graph=True)
    g_w = torch.autograd.grad(lower, m.lora)
    expect_theta = [p.detach() + alpha * gr for p, gr in zip(m.theta, g_theta)]
    expect_w = [p.detach() + beta * gr for p, gr in zip(m.lora, g_w)]
    stats = _sgd_update_matches(cfg, m, rl, sft, lam, alpha, ((m.theta, expect_theta), (m.lora, expect_w)))
    assert any(gr.abs().max() > 1e-6 for gr in g_w) and "coop_gain" not in stats


# ------------------------------------------------------------------------------------------------
# every method: finite losses, exactly the right parameters move
# ------------------------------------------------------------------------------------------------
def _rl_rows_with_signal(trainer: Trainer) -> None:
    for r in trainer.rl_rows:
        r["data_source"] = "test_even_length"


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params)]


# every method of the table (a new one is tested here without editing this file); three iterations where the
# checks below need them, else two
METHOD_STEPS = {name: 3 if name in ("sft", "rl_zero", "bridge") else 2 for name in METHOD_NAMES}


@pytest.mark.parametrize("method", list(METHOD_STEPS))
def test_method_moves_the_right_parameters(tiny_project, method):
    cfg = make_cfg(tiny_project, f"train.method={method}", f"train.steps={METHOD_STEPS[method]}",
                   "train.cold_start_sft_steps=1", "train.lr_theta=0.01", "train.lr_w=0.01",
                   "train.grpo.kl_coef=0.0" if method == "rl_zero" else "train.grpo.kl_coef=0.01")
    tr = make_trainer(cfg, device="cpu")
    _rl_rows_with_signal(tr)
    m = tr.m
    theta0, shadow0, w0 = _snapshot(m.theta), _snapshot(m.shadow_theta), _snapshot(m.lora)
    phases = []
    for _ in range(tr.total_steps):
        metrics = tr.train_step()
        phases.append(metrics["phase"])
        assert math.isfinite(metrics["loss"])
    changed = _changed(theta0, m.theta)
    assert all(changed), f"{method}: {changed.count(False)} base tensors did not move"
    if method == "rl_zero":
        assert m.ref is None, "kl_coef=0 must not load a reference model"
    if method == "cold_start":
        assert phases == ["sft", "rl", "rl", "rl"][: len(phases)] and tr.total_steps == 3
    if method == "bridge":
        assert m.shadow is not None and all(_changed(shadow0, m.shadow_theta)) and all(_changed(w0, m.lora))
        assert math.isfinite(metrics["coop_gain"]) and metrics["lambda"] == cfg.train.bridge.lam
    elif method == "bridge_frozen_w":
        assert m.shadow is None and not any(_changed(w0, m.lora)), "the ablation must leave w untouched"
    elif method == "bridge_single_level":
        assert m.shadow is None and all(_changed(w0, m.lora)) and "coop_gain" not in metrics
    else:
        assert m.shadow is None and not m.lora, f"{method} must have no LoRA and no shadow"


def test_bridge_shadow_steps_and_lambda_schedule(tiny_project):
    from bridgerl.train.updates import lam_at

    cfg = make_cfg(tiny_project, "train.bridge.shadow_steps=3", "train.bridge.lam_schedule=linear",
                   "train.bridge.lam_start=0.1", "train.bridge.lam=0.7", "train.steps=4")
    assert [round(lam_at(cfg, s, 4, 0), 6) for s in range(4)] == [0.1, 0.3, 0.5, 0.7]
    ep = make_cfg(tiny_project, "train.bridge.lam_schedule=epoch_step", "train.bridge.lam_start=0.2",
                  "train.bridge.lam_epoch_increment=0.25", "train.bridge.lam=0.6")
    assert [lam_at(ep, 0, 10, e) for e in range(3)] == [0.2, 0.45, 0.6]
    tr = make_trainer(cfg, device="cpu")
    _rl_rows_with_signal(tr)
    before_state = copy.deepcopy(tr.optimizer.state_dict()["state"])
    assert not before_state
    tr.train_step()
    # AdamW counts one step per update: θ and w once, θ̂ three times (k shadow steps)
    groups = {g["name"]: g["params"] for g in tr.optimizer.param_groups}
    st = tr.optimizer.state
    assert int(st[groups["theta"][0]]["step"]) == 1 and int(st[groups["w"][0]]["step"]) == 1
    assert int(st[groups["shadow"][0]]["step"]) == 3


def test_export_has_no_lora_or_shadow(project):
    from transformers import AutoModelForCausalLM

    from bridgerl.stages import train

    train.run(make_cfg(project, "train.method=bridge", "train.steps=2"), progress=False)
    model = AutoModelForCausalLM.from_pretrained(project / "models" / "trained")
    base = AutoModelForCausalLM.from_pretrained(project / "models" / "base")
    assert set(model.state_dict()) == set(base.state_dict())
    assert any(not torch.equal(model.state_dict()[k], base.state_dict()[k]) for k in base.state_dict())


# ------------------------------------------------------------------------------------------------
# resume: a killed run continues to exactly the uninterrupted result
# ------------------------------------------------------------------------------------------------
def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(next(path.glob("*.safetensors"))))


def _history_without_time(path):
    import csv

    rows = list(csv.DictReader(open(path)))
    return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in rows]  # wall_time_s, rollout_time_s


def _straight_and_resumed(tiny_project, tmp_path, over, stop: int = 2):
    """Train copies a (straight through) and b (stopped after `stop` steps, then resumed); their paths."""
    import shutil

    from bridgerl.stages import train

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_project, a)
    shutil.copytree(tiny_project, b)
    train.run(make_cfg(a, *over), progress=False)
    train.run(make_cfg(b, *over), max_steps=stop, progress=False)
    train.run(make_cfg(b, *over), resume=True, progress=False)
    return a, b


def test_resume_after_max_steps_is_exact(tiny_project, tmp_path):
    over = ("train.method=bridge", "train.steps=4", "train.save_every=1", "train.eval_every=2",
            "train.grpo.ppo_epochs=2", "train.grpo.mini_batches=2")
    a, b = _straight_and_resumed(tiny_project, tmp_path, over)
    wa, wb = _weights(a / "models/trained"), _weights(b / "models/trained")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _history_without_time(a / "plots/train_curve.csv") == _history_without_time(b / "plots/train_curve.csv")


@pytest.mark.slow
def test_resume_after_kill_is_exact(tiny_project, tmp_path):
    """SIGKILL a real `bridgerl train` process after its second checkpoint, resume, compare."""
    import shutil

    over = ["train.method=mixed", "train.steps=6", "train.save_every=1", "train.keep_checkpoints=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_project, a)
    shutil.copytree(tiny_project, b)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BRIDGERL_TORCH_THREADS": "1"}

    def cmd(root, *extra):
        args = [sys.executable, "-m", "bridgerl", "train", "-P", str(REPO / "params.yaml"), *extra]
        for o in FAST + path_overrides(root) + over:
            args += ["-S", o]
        return args

    subprocess.run(cmd(a), env=env, check=True, capture_output=True, cwd=a)
    proc = subprocess.Popen(cmd(b) + ["-S", "train.steps=6"], env=env, cwd=b, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = b / "checkpoints/train"
    deadline = time.time() + 300
    while time.time() < deadline and not (ck / "step-000002" / "state.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "models/trained").exists(), "killed before the end: no exported model yet"
    p = subprocess.run(cmd(b, "--resume"), env=env, capture_output=True, text=True, cwd=b)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from step" in p.stderr  # a log line: stdout holds only the JSON result
    wa, wb = _weights(a / "models/trained"), _weights(b / "models/trained")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------------------------------------
# the audit's fixes
# ------------------------------------------------------------------------------------------------
def _float64_bridge(tiny_project, *overrides, perturb_shadow=True, seed=0):
    """A float64 BRIDGE setup: models (θ̂ ≠ θ unless told, w ≠ 0), an RL batch with advantages, a demo batch."""
    from bridgerl.model.loading import load_model

    cfg = make_cfg(tiny_project, "train.method=bridge", "train.optimizer=sgd", "train.max_grad_norm=null",
                   "train.lr_theta=0.05", "train.lr_w=0.05", "train.grpo.kl_coef=0.0", *overrides)
    torch.manual_seed(seed)
    m = build_models(cfg, load_model(str(tiny_project / "models" / "base"), dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if perturb_shadow:
            for p in m.shadow_theta:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for p in m.lora:
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    rl, sft = _random_batches(m.policy.config.vocab_size if hasattr(m.policy, "config") else 320, gen)
    rl.extras["advantages"] = torch.randn(len(rl), generator=gen, dtype=torch.float64)
    return cfg, m, rl, sft


def _ctx(cfg, m):
    opt = torch.optim.SGD([g for g in m.param_groups(cfg) if g["params"]], lr=cfg.train.lr_theta)
    return Ctx(m, TorchEngine(cfg, m, opt, ProcEnv()), cfg)


def test_extra_shadow_steps_use_the_policy_as_behaviour(tiny_project):
    """shadow_steps = 2, one update per rollout batch: both shadow steps importance-weight by π(θ, w)
    (the sampling policy), so θ̂ after the update is two SGD steps on J_RL(·, w) with old = π(θ, w)."""
    cfg, m, rl, sft = _float64_bridge(tiny_project, "train.bridge.shadow_steps=2", "train.grpo.clip_eps=10.0")
    g = cfg.train.grpo
    alpha = cfg.train.lr_theta
    m.policy.eval(), m.shadow.eval()
    with torch.no_grad():
        behaviour = token_logprobs(m.policy, rl.input_ids, rl.attention_mask)[0]

    def shadow_after_two_steps(old_of):
        sh = copy.deepcopy(m.shadow)
        params = [p for n, p in sh.named_parameters() if "lora_" not in n]
        for _ in range(2):
            logp = token_logprobs(sh, rl.input_ids, rl.attention_mask)[0]
            loss = grpo_loss(logp, old_of(logp), rl.extras["advantages"], rl.mask, g.clip_eps).loss
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, gr in zip(params, grads):
                    p.sub_(alpha * gr)
        return [p.detach() for p in params]

    expected = shadow_after_two_steps(lambda logp: behaviour)
    ratio_one = shadow_after_two_steps(lambda logp: logp.detach())  # the bug: the shadow as its own behaviour
    bridge_update(_ctx(cfg, m), rl, sft, lam=0.5)
    for p, e in zip(m.shadow_theta, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-11)
    assert max((a - b).abs().max().item() for a, b in zip(expected, ratio_one)) > 1e-6, "test cannot tell them apart"


def test_cooperative_gradient_is_zero_at_equal_shadow_with_dropout(tiny_project):
    """LoRA dropout 0.3, θ̂ = θ, λ = 1: w's gradient is −λ(∇w J_RL(θ,w) − ∇w J_RL(θ̂,w)) = 0, because the
    RL passes run without dropout (with dropout masks differing between the passes it was noise)."""
    cfg, m, rl, sft = _float64_bridge(tiny_project, "train.lora.dropout=0.3", perturb_shadow=False)
    m.policy.train(), m.shadow.train()
    ctx = _ctx(cfg, m)
    from bridgerl.train.updates import bridge_backward, grpo_term

    out, _, _ = grpo_term(m.policy, rl, cfg)
    g_rl = torch.autograd.grad(out.loss, [p for p in m.lora if p.requires_grad])
    assert max(x.abs().max().item() for x in g_rl) > 1e-6, "∇w J_RL must not vanish by itself"
    bridge_backward(ctx, rl, sft, lam=1.0)
    assert max(p.grad.abs().max().item() for p in m.lora) < 1e-12
    assert m.policy.training, "the policy's mode is restored after the RL passes"


def test_rl_log_probs_use_the_sampling_temperature(tiny_project):
    cfg = make_cfg(tiny_project, "train.method=rl_zero", "train.grpo.temperature=0.5", "train.grpo.kl_coef=0.01",
                   "train.grpo.ppo_epochs=2")
    tr = make_trainer(cfg, device="cpu")
    batch, _ = tr.rollouts()
    with torch.no_grad():
        logits = tr.m.ref(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        at = lambda T: torch.log_softmax(logits / T, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # noqa: E731
    mask = batch.mask.bool()
    torch.testing.assert_close(batch.extras["ref_logp"][mask], at(0.5)[mask], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batch.extras["ref_logp"][mask], at(1.0)[mask], atol=1e-3)


@pytest.mark.parametrize("strategy", ["none", "zero2"])
@pytest.mark.parametrize("method", ["mixed", "bridge"])
def test_more_minibatches_than_demos_is_refused(tmp_path, strategy, method):
    """A mini-batch split that would leave an RL mini-batch without demos is refused for every engine
    (it used to drop rollouts silently in one process)."""
    from bridgerl.config import ConfigError

    with pytest.raises(ConfigError, match=r"grpo.mini_batches = 4 > demo_batch = 3"):
        make_cfg(tmp_path, f"train.method={method}", "train.grpo.mini_batches=4", "train.demo_batch=3",
                 f"train.distributed.strategy={strategy}")
    make_cfg(tmp_path, "train.method=rl_zero", "train.grpo.mini_batches=4", "train.demo_batch=3")  # no SFT: fine


@pytest.mark.parametrize("ref_model", ["rl_start", "initial"])
def test_cold_start_kl_reference(tiny_project, ref_model):
    cfg = make_cfg(tiny_project, "train.method=cold_start", "train.cold_start_sft_steps=1", "train.steps=1",
                   "train.grpo.kl_coef=0.01", "train.lr_theta=0.01", f"train.grpo.ref_model={ref_model}")
    tr = make_trainer(cfg, device="cpu")
    initial = _snapshot(tr.m.ref.parameters())
    tr.train_step()  # SFT
    after_sft = _snapshot(tr.m.policy.parameters())
    assert any(_changed(initial, tr.m.policy.parameters()))
    tr.train_step()  # the first RL iteration
    want = after_sft if ref_model == "rl_start" else initial
    assert all(torch.equal(a, b.detach()) for a, b in zip(want, tr.m.ref.parameters()))


def test_cold_start_resume_keeps_the_rl_start_reference(tiny_project, tmp_path):
    over = ("train.method=cold_start", "train.cold_start_sft_steps=1", "train.steps=2", "train.save_every=1",
            "train.grpo.kl_coef=0.05", "train.lr_theta=0.01")
    a, b = _straight_and_resumed(tiny_project, tmp_path, over, stop=2)  # stops after the reference was reset
    wa, wb = _weights(a / "models/trained"), _weights(b / "models/trained")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_rollouts_keep_every_sampled_token(tiny_project):
    """A truncated rollout that sampled the pad token (pad ≠ eos) keeps it: the trained sequence is the
    sampled one."""
    from bridgerl.model.loading import load_model, load_tokenizer
    from bridgerl.rollout.generation import generate

    base = str(tiny_project / "models" / "base")
    tok, model = load_tokenizer(base), load_model(base)
    assert tok.pad_token_id != tok.eos_token_id
    pad, eos = tok.pad_token_id, tok.eos_token_id

    def pad_at_third_never_eos(input_ids, scores):
        scores = scores.clone()
        scores[:, eos] = -float("inf")
        if step[0] == 2:
            scores[:, pad] = 1e4
        step[0] += 1
        return scores

    step = [0]
    out = generate(model, tok, ["Tom has 3 apples."], 6, temperature=0.0, logits_processor=[pad_at_third_never_eos])
    resp = out.response_ids[0]
    assert out.truncated == [True] and len(resp) == 6 and resp[2] == pad


def test_generation_copy_is_made_from_the_model_in_memory(tiny_project):
    """A Trainer given a model in memory generates from that model, whatever model.out_dir holds: here a
    model of another size (the copy used to be loaded from model.out_dir: a size mismatch in update_weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from bridgerl.model.loading import load_tokenizer
    from bridgerl.train.trainer import load_inputs

    cfg = make_cfg(tiny_project, "train.method=rl_zero", "train.rollout.backend=hf", "train.grpo.kl_coef=0.0")
    base_dir = str(tiny_project / "models" / "base")
    other = AutoConfig.from_pretrained(base_dir)
    other.num_hidden_layers += 1  # not the model on disk
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(other)
    tr = Trainer(cfg, build_models(cfg, model), load_tokenizer(base_dir), *load_inputs(cfg), device="cpu")
    assert math.isfinite(tr.train_step()["loss"])
    copy = tr.rollout.engine.model
    assert copy.config.num_hidden_layers == other.num_hidden_layers and copy is not model
    merged = dict(model.named_parameters())  # rl_zero: no adapter, the policy is the model itself
    assert all(torch.equal(t, merged[n]) for n, t in copy.named_parameters() if n in merged)


def test_stage_run_switch(tmp_path):
    from bridgerl.tracking.runs import stage_run

    cfg = make_cfg(tmp_path, "tracking.enabled=true", f"tracking.local_db={tmp_path}/mlruns.db")
    with stage_run(cfg, "train", enabled=False) as mlf:
        assert mlf.active_run() is None
        mlf.log_metric("x", 1.0)
    assert not (tmp_path / "mlruns.db").exists()
