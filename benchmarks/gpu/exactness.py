"""Exactness on the device: the product's update rules and chunked log-probs, against a reference.

- `update_rules`: every method of the table (bridgerl.core.methods) applies its rule
  (bridgerl.train.updates.UPDATES) to the same small random Qwen2-shaped model and the same batches, once on
  the device in float32 and once on the CPU in float64 (the reference, as tests/test_trainer.py uses it);
  the gradient of every parameter group at every optimizer step is recorded (an engine that records before
  it steps) and compared: relative L2 error ‖g_dev − g_ref‖ / ‖g_ref‖ per group and step. The same
  switches as the GPU runs are on: gradient checkpointing, chunked log-probs, token-bounded micro-batches.
- `chunked_logprobs`: token_logprobs with the chunked output layer against the full logits, both in bf16
  on the device with the real vocabulary (151,936), plus both against an fp32 copy of the same model; and
  the gradients of Σ log p through both paths (cosine similarity).

Tolerances are module constants and are written into the results with each figure.
"""

from __future__ import annotations

import copy
import math

import torch

RULE_RTOL = 1e-5  # fp32 on the device vs float64: relative L2 error of each group's gradient
CHUNK_MAX_ABS = 0.05  # bf16 chunked vs bf16 full log-probs: max |Δ log p| (nats) over response tokens
CHUNK_GRAD_COS = 0.999  # bf16 chunked vs full: cosine similarity of the gradient of Σ log p

SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=1e6)


def _qwen(shape: dict, dtype: torch.dtype, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa")).to(dtype)


def _recording_engine(cfg, models, optimizer):
    from bridgerl.train.engines import TorchEngine
    from bridgerl.train.parallel import ProcEnv

    class Recording(TorchEngine):
        """TorchEngine that keeps each step's gradients (per parameter group, flattened, float64 on the CPU)."""

        steps: list[dict[str, torch.Tensor]] = []

        def step(self):
            grads = {}
            for g in self.optimizer.param_groups:
                parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten().cpu()
                         for p in g["params"]]
                grads[g["name"]] = torch.cat(parts)
            self.steps.append(grads)
            super().step()

    eng = Recording(cfg, models, optimizer, ProcEnv())
    eng.steps = []
    return eng


def _batches(vocab: int, seed: int):
    from bridgerl.train.batches import collate

    gen = torch.Generator().manual_seed(seed)

    def seqs(n, lp, lr):
        return ([torch.randint(3, vocab, (lp,), generator=gen).tolist() for _ in range(n)],
                [torch.randint(3, vocab, (lr + 3 * i,), generator=gen).tolist() for i in range(n)])

    rl = collate(*seqs(6, 7, 10), pad_id=0)
    sft = collate(*seqs(4, 6, 12), pad_id=0)
    rl.extras["advantages"] = torch.randn(len(rl), generator=gen, dtype=torch.float64)
    return rl, sft, gen


def _to(batch, device, dtype):
    from bridgerl.train.batches import SeqBatch

    ex = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.extras.items()}
    return SeqBatch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.mask.to(device), ex)


def _models_to(models, device, dtype):
    for mod in (models.policy, models.shadow, models.ref):
        if mod is not None:
            mod.to(device=device, dtype=dtype)
    return models


def update_rules(load_cfg, device: torch.device, seed: int = 0) -> dict:
    """Each method's per-step gradients on `device` (float32) vs the CPU (float64)."""
    from bridgerl.core.methods import METHODS
    from bridgerl.train.losses import token_logprobs
    from bridgerl.train.models import build_models
    from bridgerl.train.updates import UPDATES, Ctx

    out = {"tolerance": {"relative_l2": RULE_RTOL}, "device_dtype": "float32", "reference": "cpu float64",
           "switches": "gradient_checkpointing, logprob_chunk_tokens=16, micro_batch_tokens=48", "methods": {}}
    for name, spec in METHODS.items():
        cfg = load_cfg([f"train.method={name}", "train.optimizer=sgd", "train.max_grad_norm=null",
                        "train.lr_theta=0.01", "train.lr_w=0.01", "train.grpo.kl_coef=0.05", "train.lora.r=4",
                        "train.lora.alpha=8", "train.lora.dropout=0.0", "train.grpo.temperature=0.9",
                        "train.gradient_checkpointing=true", "train.logprob_chunk_tokens=16",
                        "train.micro_batch_tokens=48", "train.cold_start_sft_steps=1"])
        ref_models = build_models(cfg, _qwen(SMALL, torch.float64, seed))
        rl, sft, gen = _batches(SMALL["vocab_size"], seed + 1)
        with torch.no_grad():  # θ̂ ≠ θ and w ≠ 0, so every term of BRIDGE's formulas matters
            for p in ref_models.shadow_theta:
                p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            for p in ref_models.lora:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            if spec.rl:
                lp = token_logprobs(ref_models.policy, rl.input_ids, rl.attention_mask, temperature=0.9)[0]
                rl.extras["old_logp"] = lp + 0.3 * torch.randn(lp.shape, generator=gen, dtype=lp.dtype)
                rl.extras["ref_logp"] = token_logprobs(ref_models.ref, rl.input_ids, rl.attention_mask,
                                                       temperature=0.9)[0]
        dev_models = _models_to(copy.deepcopy(ref_models), device, torch.float32)  # one deepcopy: w stays shared
        rule = UPDATES[spec.phase(10**6, cfg.train.cold_start_sft_steps)]
        grads = {}
        for tag, m, dev, dt in (("ref", ref_models, torch.device("cpu"), torch.float64),
                                ("dev", dev_models, device, torch.float32)):
            opt = torch.optim.SGD([g for g in m.param_groups(cfg) if g["params"]], lr=cfg.train.lr_theta)
            eng = _recording_engine(cfg, m, opt)
            rule(Ctx(m, eng, cfg), _to(rl, dev, dt) if spec.rl else None, _to(sft, dev, dt) if spec.sft else None,
                 0.5)
            grads[tag] = eng.steps
        errs, norms = {}, {}
        for step, (gr, gd) in enumerate(zip(grads["ref"], grads["dev"])):
            for group, r in gr.items():
                e = float((gd[group] - r).norm() / r.norm().clamp(min=1e-300))
                errs[f"step{step}/{group}"] = e
                norms[f"step{step}/{group}"] = float(r.norm())
        worst = max(errs.values())
        out["methods"][name] = {"rule": rule.__name__, "steps": len(grads["dev"]), "relative_l2": errs,
                                "gradient_norm": norms, "max_relative_l2": worst,
                                "nonzero": all(v > 0 for v in norms.values()),
                                "pass": bool(worst <= RULE_RTOL and len(grads["dev"]) == len(grads["ref"]) > 0)}
    out["pass"] = all(m["pass"] for m in out["methods"].values())
    return out


def chunked_logprobs(device: torch.device, vocab: int, rows: int, length: int, chunk: int, seed: int = 0) -> dict:
    """bf16 chunked output layer vs bf16 full logits (and both vs fp32), real vocabulary, on `device`."""
    from bridgerl.train.batches import collate
    from bridgerl.train.losses import token_logprobs

    shape = dict(SMALL, vocab_size=vocab, hidden_size=128, intermediate_size=256, max_position_embeddings=4096)
    model32 = _qwen(shape, torch.float32, seed).to(device)
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (16,), generator=gen).tolist() for _ in range(rows)]
    resp = [torch.randint(3, vocab, (length - 16 - 7 * i,), generator=gen).tolist() for i in range(rows)]
    b = collate(prompts, resp, pad_id=0).to(device)
    sel = b.mask > 0

    def run(model, chunk_tokens):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, b.input_ids, b.attention_mask, with_entropy=True, mask=b.mask,
                                 chunk_tokens=chunk_tokens)
        (lp * b.mask).sum().backward()
        g = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return lp.detach().float()[sel], ent.detach().float()[sel], g

    c_lp, c_ent, c_g = run(model16, chunk)
    f_lp, f_ent, f_g = run(model16, None)
    r_lp, _, r_g = run(model32, None)
    cos = float(torch.nn.functional.cosine_similarity(c_g, f_g, dim=0))
    res = {"dtype": "bfloat16", "vocab": vocab, "rows": rows, "tokens": int(b.n_tokens), "chunk_tokens": chunk,
           "response_tokens": int(sel.sum()),
           "max_abs_chunked_vs_full": float((c_lp - f_lp).abs().max()),
           "mean_abs_chunked_vs_full": float((c_lp - f_lp).abs().mean()),
           "max_abs_entropy_chunked_vs_full": float((c_ent - f_ent).abs().max()),
           "max_abs_chunked_vs_fp32": float((c_lp - r_lp).abs().max()),
           "max_abs_full_vs_fp32": float((f_lp - r_lp).abs().max()),
           "grad_cosine_chunked_vs_full": cos,
           "grad_cosine_chunked_vs_fp32": float(torch.nn.functional.cosine_similarity(c_g, r_g, dim=0)),
           "tolerance": {"max_abs_chunked_vs_full": CHUNK_MAX_ABS, "grad_cosine_chunked_vs_full": CHUNK_GRAD_COS}}
    res["pass"] = bool(res["max_abs_chunked_vs_full"] <= CHUNK_MAX_ABS and cos >= CHUNK_GRAD_COS
                       and math.isfinite(res["max_abs_chunked_vs_fp32"]))
    return res
