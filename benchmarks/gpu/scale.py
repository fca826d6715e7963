"""The product's Trainer at a Qwen2.5 shape on one device: rl_zero and bridge interleaved.

For one model shape (bridgerl.train.plan.KNOWN_SHAPES, random weights; project.py writes the model directory and
inputs), two trainers are built by `make_trainer` from the qwen2.5-3b preset adapted to one device
(strategy none, the HF generation copy as rollout engine, 16 prompts x 5 rollouts x 1,024 new tokens with
EOS ignored through the engine's `ignore_eos`), and iterations run A B B A. Each `train_step` is timed
(CUDA synchronized) and split by wrapping the trainer's own `generate_rollouts` and `rollouts`:

- rollout  = `generate_rollouts` (the generation copy's weight sync + decoding);
- logprobs = the rest of `rollouts` (collate, rewards, old/ref log-probs; one update per batch: the
  behaviour log-probs are the update's own forward, so this is the reference's forward);
- update   = the rest of `train_step` (the demo batch and the method's update rule).

Each iteration also reads the share of one θ weight matrix's elements that the update changed: in bf16 with
the preset's learning rate (5e-7) most of an AdamW step is below bf16's resolution and rounds away.

Memory: torch.cuda.max_memory_allocated over the rollout phase and over the update, less what the other
trainer holds at rest (measured after both warm-ups), against `bridgerl.train.plan.plan` for the same
configuration. Derived figures (decode tokens/s vs the HBM bound, the update's MFU) use the formulas in
this module and the ceilings passed in; the JSON says which figures are measured and which are computed.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from pathlib import Path

import torch

GIB = 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


# ------------------------------------------------------------------------------------------------
# model arithmetic (computed, not measured)
# ------------------------------------------------------------------------------------------------
def layer_matmul_params(shape: dict) -> int:
    """Weights one token multiplies per decoder layer: q, k, v, o and the SwiGLU MLP."""
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    return h * h + 2 * h * kv + h * h + 3 * h * inter


def forward_flops(shape: dict, rows: int, seq_len: int, head_positions: int) -> float:
    """One forward over `rows` sequences of `seq_len` tokens: 2 FLOPs per weight and token in the decoder,
    causal attention (QK^T and AV: 2·n²·h per layer and sequence), the output layer at `head_positions`
    (the chunked log-probs apply it only at response positions). LoRA's r-rank products are left out."""
    L, h, V = shape["num_hidden_layers"], shape["hidden_size"], shape["vocab_size"]
    tokens = rows * seq_len
    return 2.0 * tokens * L * layer_matmul_params(shape) + 2.0 * L * h * rows * seq_len**2 + 2.0 * head_positions * h * V


def decode_bytes_per_step(shape: dict, n_params: int, bytes_per: int, rows: int, context: float) -> float:
    """HBM bytes one decode step must read at least: every weight once (the tied output layer reads the
    whole embedding matrix) and the KV cache of `rows` sequences of `context` tokens."""
    L, h = shape["num_hidden_layers"], shape["hidden_size"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    return n_params * bytes_per + rows * context * L * 2 * kv * bytes_per


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def config_overrides(root: Path, model_dir: Path, method: str, s: dict) -> list[str]:
    """The qwen2.5-3b preset (loaded under these) adapted to one device and this benchmark's batch."""
    return [f"model.base={model_dir}", f"model.out_dir={model_dir}", f"model.dtype={s['dtype']}",
            f"data.out_dir={root}/data", f"demos.out_dir={root}/demos", f"train.out_dir={root}/trained",
            f"train.checkpoint_dir={root}/checkpoints", f"train.metrics_file={root}/metrics/train.json",
            f"train.plots_file={root}/plots/train.csv", f"eval.out_dir={root}/eval",
            f"eval.metrics_file={root}/metrics/eval.json", f"registry.out_file={root}/metrics/register.json",
            f"tracking.local_db={root}/mlruns.db", "tracking.enabled=false",
            f"train.method={method}", "train.distributed.strategy=none", "train.distributed.nproc=1",
            "train.rollout.backend=hf", "train.rollout.hf_generation_copy=true",
            f"train.prompt_batch={s['prompts']}", f"train.demo_batch={s['prompts']}",
            f"train.grpo.group_size={s['group']}", f"train.grpo.max_new_tokens={s['new_tokens']}",
            f"train.micro_batch_tokens={s['micro_batch_tokens']}",
            f"train.logprob_chunk_tokens={s['logprob_chunk_tokens']}", "train.gradient_checkpointing=true",
            "train.eval_every=0", 'eval.prompt_template="{problem}"',
            "eval.use_chat_template=false"]


class Instrumented:
    """A trainer whose rollout phases are timed (and their peak memory read) through its own methods."""

    def __init__(self, trainer, device: torch.device):
        self.tr, self.device, self.rec = trainer, device, {}
        gen, roll = trainer.generate_rollouts, trainer.rollouts

        def generate_rollouts(problems):
            _sync(device)
            t0 = time.perf_counter()
            out = gen(problems)
            _sync(device)
            self.rec["rollout_s"] = time.perf_counter() - t0
            return out

        def rollouts():
            _sync(device)
            _peak_reset(device)
            t0 = time.perf_counter()
            out = roll()
            _sync(device)
            self.rec["rollouts_s"] = time.perf_counter() - t0
            self.rec["rollout_phase_peak"] = _peak(device)
            _peak_reset(device)
            return out

        trainer.generate_rollouts = generate_rollouts
        trainer.rollouts = rollouts
        eng = trainer.rollout.engine  # the generation copy, started now: every rollout is max_new_tokens long
        eng.generate = functools.partial(type(eng).generate, eng, ignore_eos=True)

    def step(self, new_tokens: int | None = None) -> dict:
        g = self.tr.cfg.train.grpo
        keep = g.max_new_tokens
        if new_tokens is not None:
            g.max_new_tokens = new_tokens
        mats = [q for q in self.tr.m.theta if q.dim() == 2]
        probe = mats[len(mats) // 2]  # a mid-network weight matrix of θ
        before = probe.detach().clone()
        try:
            self.rec = {}
            _sync(self.device)
            t0 = time.perf_counter()
            metrics = self.tr.train_step()
            _sync(self.device)
            step_s = time.perf_counter() - t0
        finally:
            g.max_new_tokens = keep
        r = self.rec
        return {"step_s": step_s, "rollout_s": r["rollout_s"], "logprobs_s": r["rollouts_s"] - r["rollout_s"],
                "update_s": step_s - r["rollouts_s"], "rollout_phase_peak": r["rollout_phase_peak"],
                "update_phase_peak": _peak(self.device), "generated_tokens": int(metrics["generated_tokens"]),
                "trained_tokens": int(metrics["trained_tokens"]), "batch_tokens": int(metrics["batch_tokens"]),
                "state_memory_mb": metrics["state_memory_mb"], "loss": metrics["loss"],
                "optimizer_steps": int(metrics["optimizer_steps"]),
                "theta_changed_fraction": float((probe.detach() != before).float().mean()),
                "theta_probe": {"numel": probe.numel(), "dtype": str(probe.dtype).removeprefix("torch."),
                                "lr": self.tr.optimizer.param_groups[0]["lr"]}}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run_size(label: str, shape: dict, s: dict, device: torch.device, root: Path, load_cfg, ceilings: dict,
             budget) -> dict:
    """rl_zero and bridge at `shape`: settings `s`, interleaved rounds while `budget` allows."""
    import project

    from bridgerl.core.methods import METHODS
    from bridgerl.train.plan import RESERVE_GB, plan
    from bridgerl.train.trainer import make_trainer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t_setup = time.perf_counter()
    model_dir = root / "model"
    made = project.make_model_dir(model_dir, shape, dtype, device, seed=0)
    demos = project.write_inputs(root / "data", root / "demos", s["prompts"], s["prompt_tokens"], s["demo_tokens"])
    project.register_reward()
    methods = ("rl_zero", "bridge")
    cfgs = {m: load_cfg(config_overrides(root, model_dir, m, s)) for m in methods}
    gc.collect()
    base0 = _allocated(device)
    trainers, resident, warm = {}, {}, {}
    for m in methods:
        before = _allocated(device)
        trainers[m] = Instrumented(make_trainer(cfgs[m], device=device), device)
        warm[m] = trainers[m].step(new_tokens=s["warm_tokens"])
        gc.collect()
        resident[m] = _allocated(device) - before
    setup_s = time.perf_counter() - t_setup
    tr0 = trainers[methods[0]].tr  # token lengths as the trainer tokenizes (the prompt gains a newline)
    prompt_len = len(tr0.tok(tr0.prompt_text(demos[0]["problem"]), add_special_tokens=False)["input_ids"])
    demo_len = prompt_len + len(tr0.tok(demos[0]["response"], add_special_tokens=False)["input_ids"]) + 1  # + EOS

    iters: dict[str, list[dict]] = {m: [] for m in methods}
    skipped = []
    for rnd in range(s["rounds"]):
        for m in (methods if rnd % 2 == 0 else methods[::-1]) + (methods[::-1] if rnd % 2 == 0 else methods):
            est = iters[m][-1]["step_s"] if iters[m] else 0.0
            if iters[m] and budget.left() < est:
                skipped.append(f"round {rnd}: {m} (needs ~{est:.0f} s, {budget.left():.0f} s of budget left)")
                continue
            it = trainers[m].step()
            other = sum(resident[o] for o in methods if o != m) + base0
            for k in ("rollout_phase_peak", "update_phase_peak"):
                it[k + "_own_gib"] = None if it[k] is None else (it[k] - other) / GIB
            iters[m].append(it)
        if skipped:
            break
    for tr in trainers.values():
        tr.tr.close()
    del trainers, tr0, tr
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    gpu_gib = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else 80.0
    rows = s["prompts"] * s["group"]
    seq_len = prompt_len + s["new_tokens"]
    bpe = 2 if dtype == torch.bfloat16 else 4
    out = {"shape": shape, "parameters": made["parameters"], "dtype": made["dtype"], "setup_s": setup_s,
           "prompt_len": prompt_len, "demo_len": demo_len, "train_config": cfgs["bridge"].train.model_dump(mode="json"),
           "resident_at_rest_gib": {m: resident[m] / GIB for m in methods}, "skipped": skipped,
           "warmup": {m: dict(warm[m], new_tokens=s["warm_tokens"]) for m in methods}, "methods": {}}
    for m in methods:
        its = iters[m]
        spec = METHODS[m]
        passes = ([("sft", s["prompts"], demo_len, s["prompts"] * (demo_len - prompt_len))] if spec.sft else []) \
            + [("rl", rows, seq_len, rows * s["new_tokens"])] * (2 if spec.shadow else 1)
        fwd = sum(forward_flops(shape, r, n, hp) for _, r, n, hp in passes)
        p = plan(cfgs[m], gpu_gb=gpu_gib, nproc=1, prompt_tokens=prompt_len)
        reserve = RESERVE_GB  # context/NCCL/fragmentation: not seen by max_memory_allocated
        med = {k: _median(i[k] for i in its) for k in ("step_s", "rollout_s", "logprobs_s", "update_s",
                                                       "rollout_phase_peak_own_gib", "update_phase_peak_own_gib")}
        gen_tok = its[0]["generated_tokens"] if its else None
        context = prompt_len + s["new_tokens"] / 2
        bound_step = decode_bytes_per_step(shape, made["parameters"], bpe, rows, context) / ceilings["hbm_bytes_per_s"]
        tps = gen_tok / med["rollout_s"] if its else None
        flops = 3.0 * fwd  # model FLOPs: forward + backward (2x); recomputation (checkpointing) not counted
        hw_flops = 4.0 * fwd  # + the checkpointed forward recomputed in backward
        train_peak = med["update_phase_peak_own_gib"]
        roll_peak = med["rollout_phase_peak_own_gib"]
        out["methods"][m] = {
            "iterations": its, "median": med,
            "expected_generated_tokens": rows * s["new_tokens"],
            "expected_trained_tokens": sum(r * n for _, r, n, _ in passes),
            "passes": [{"what": w, "rows": r, "seq_len": n, "head_positions": hp} for w, r, n, hp in passes],
            "decode": {"tokens_per_s": tps, "rows": rows, "bytes_per_step": bound_step * ceilings["hbm_bytes_per_s"],
                       "hbm_bound_tokens_per_s": rows / bound_step,
                       "fraction_of_hbm_bound": (tps * bound_step / rows) if tps else None},
            "update": {"model_flops": flops, "hardware_flops": hw_flops,
                       "mfu": flops / med["update_s"] / ceilings["bf16_flops_per_s"] if its else None,
                       "hfu": hw_flops / med["update_s"] / ceilings["bf16_flops_per_s"] if its else None},
            "plan": {**p.as_dict(), "reserve_gb": reserve,
                     "training_phase_excl_reserve_gb": p.train_gb - reserve,
                     "rollout_phase_excl_reserve_gb": p.rollout_gb - reserve},
            "measured_vs_plan": {
                "update_phase": train_peak / (p.train_gb - reserve) if train_peak is not None else None,
                "rollout_phase": roll_peak / (p.rollout_gb - reserve) if roll_peak is not None else None},
        }
    rz, br = out["methods"]["rl_zero"]["median"], out["methods"]["bridge"]["median"]
    out["bridge_over_rl_zero"] = {k: (br[k] / rz[k] if br[k] and rz[k] else None)
                                  for k in ("step_s", "rollout_s", "logprobs_s", "update_s",
                                            "update_phase_peak_own_gib")}
    out["label"] = label
    return out
