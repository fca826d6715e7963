"""The cost axes of `bridgerl compare` count what the trainer really does: for one iteration of every
method (and BRIDGE with several shadow steps and mini-batches), the optimizer steps taken and the tokens
that go through a forward pass with gradients match bridgerl.comparison.costs.passes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg

from bridgerl.comparison import costs
from bridgerl.core.methods import METHOD_NAMES


def _count(tr):
    seen = {"tokens": 0, "steps": 0, "R": 0, "S": 0}

    def pre(module, args, kwargs):  # the decoder: the full-logits and the chunked log-probs both run it
        if torch.is_grad_enabled():
            mask = kwargs.get("attention_mask")
            seen["tokens"] += int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel())

    decoders = [x.get_decoder() for x in (tr.m.policy, tr.m.shadow) if x is not None]
    for m in {id(d): d for d in decoders}.values():
        m.register_forward_pre_hook(pre, with_kwargs=True)
    tr.optimizer.register_step_post_hook(lambda *a: seen.__setitem__("steps", seen["steps"] + 1))
    rollouts, sft_batch = tr.rollouts, tr.sft_batch

    def rollouts_counted():
        batch, info = rollouts()
        seen["R"] += batch.n_tokens
        return batch, info

    def sft_counted():
        batch = sft_batch()
        seen["S"] += batch.n_tokens
        return batch

    tr.rollouts, tr.sft_batch = rollouts_counted, sft_counted
    return seen


@pytest.mark.parametrize("method,extra", [(m, ()) for m in METHOD_NAMES] + [
    ("bridge", ("train.bridge.shadow_steps=2", "train.grpo.mini_batches=2", "train.grpo.ppo_epochs=2")),
    ("mixed", ("train.grpo.mini_batches=2",)),
])
def test_passes_match_the_trainer(tiny_project, method, extra):
    from bridgerl.train.trainer import make_trainer

    cfg = make_cfg(tiny_project, f"train.method={method}", "train.cold_start_sft_steps=1", "train.prompt_batch=2",
                   "train.demo_batch=2", *extra)
    tr = make_trainer(cfg, device="cpu")
    seen = _count(tr)
    history = []  # the curve's rows (the train stage writes what train_step returns)
    for _ in range(2):  # cold start: an SFT iteration, then an RL one
        phase = tr.phase(tr.step)
        before = dict(seen)
        metrics = tr.train_step()
        history.append(metrics)
        rl_passes, sft_passes, steps = costs.passes(cfg, method, phase)
        R, S = seen["R"] - before["R"], seen["S"] - before["S"]
        assert seen["steps"] - before["steps"] == steps, phase
        assert seen["tokens"] - before["tokens"] == rl_passes * R + sft_passes * S, phase
        # the trainer's own count (bridgerl.train.updates.Ctx.backward) is the same
        assert metrics["trained_tokens"] == seen["tokens"] - before["tokens"] > 0, phase
    # the trainer's own counts (curve columns) agree with the formulas, and the cumulated costs read them
    rows = [{k: ("" if v is None else v) for k, v in h.items()} for h in history]
    for h in rows:
        derived = costs.iteration_cost(cfg, method, h["phase"], float(h.get("response_length") or "nan"),
                                       costs.TokenMeans(0.0, 0.0))
        assert float(h.get("generated_tokens") or 0.0) == pytest.approx(derived["generated_tokens"]), h["phase"]
    cum = costs.cumulative(cfg, method, rows, costs.TokenMeans(0.0, 0.0))
    assert cum[-1]["optimizer_steps"] == seen["steps"] == tr.engine.optimizer_steps
    assert cum[-1]["generated_tokens"] == sum(float(h.get("generated_tokens") or 0.0) for h in rows)
    assert cum[-1]["trained_tokens"] == seen["tokens"]  # recorded (the formula without token means gives 0)
    rows[-1]["optimizer_steps"] = 99  # a recorded count wins over the formula
    assert costs.cumulative(cfg, method, rows, costs.TokenMeans(0.0, 0.0))[-1]["optimizer_steps"] == 99
