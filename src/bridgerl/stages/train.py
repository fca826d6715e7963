"""`bridgerl train`: run the configured method and export θ (with w merged) as a model directory.

Inputs: model.out_dir (base model), data.out_dir/rl_train.jsonl + rl_val.jsonl, demos.out_dir/demos.jsonl.
Outputs: train.out_dir (AutoModelForCausalLM-loadable, no LoRA or shadow weights),
train.metrics_file (final metrics JSON), train.plots_file (per-step CSV: DVC plots),
checkpoints under train.checkpoint_dir (not a DVC output; `--resume` continues from the newest).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from bridgerl.config import Config
from bridgerl.core import keys
from bridgerl.core.io import atomic_dir, atomic_file, write_json
from bridgerl.core.stage_table import BASE_RECORD
from bridgerl.tracking.runs import stage_run
from bridgerl.train import checkpoint, parallel
from bridgerl.train.models import export
from bridgerl.train.trainer import Trainer, make_trainer

CURVE_FIELDS = ["step", "wall_time_s", "phase", "reward_mean", "accuracy", "heldout_accuracy", "sft_nll", "kl",
                "entropy", "response_length", "coop_gain", "lambda", "grad_norm", "shadow_grad_norm", "loss",
                "generated_tokens", "batch_tokens", "trained_tokens", "optimizer_steps", "step_time_s",
                "rollout_time_s", "engine_logp_abs_diff", "rollout_allgathers", "rollout_allgather_mb"]


def curve_fields(cfg: Config) -> list[str]:
    """The curve's columns: CURVE_FIELDS, then each reward term's mean value and failures (rewards.terms)."""
    return CURVE_FIELDS + [f"{k}/{t.name}" for t in cfg.rewards.terms for k in ("reward", "reward_failures")]


def _curve_csv(history: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for h in history:
        w.writerow({k: h.get(k, "") for k in fields})
    return buf.getvalue()


def _final_metrics(tr: Trainer) -> dict:
    hist = tr.history
    out = {"method": tr.method, "steps": tr.step, "wall_time_s": round(tr.elapsed, 3),
           "rollout_backend": tr.rollout.backend,  # what train.rollout.backend (auto) chose here
           "peak_memory_mb": max((h.get("peak_memory_mb", 0.0) for h in hist), default=0.0),
           "state_memory_mb": max((h.get("state_memory_mb", 0.0) for h in hist), default=0.0)}
    # cost axes that carry over to scale: tokens generated, tokens in the iterations' batches, tokens through
    # forward+backward passes (counted by the update rules: bridgerl.train.updates.Ctx.backward), optimizer steps
    for k in ("generated_tokens", "batch_tokens", "trained_tokens"):
        out[k] = sum(h.get(k, 0.0) for h in hist)
    if hist and "optimizer_steps" in hist[-1]:
        out["optimizer_steps"] = hist[-1]["optimizer_steps"]
    held = [h for h in hist if not math.isnan(h.get("heldout_accuracy", float("nan")))]
    if held:
        out["heldout_accuracy"] = held[-1]["heldout_accuracy"]
    tail = hist[-10:]
    terms = [t.name for t in tr.cfg.rewards.terms]
    for k in ("reward_mean", "accuracy", "sft_nll", "kl", "coop_gain", "response_length", *(f"reward/{n}" for n in terms)):
        vals = [h[k] for h in tail if k in h]
        if vals:
            out[f"{k}_last10"] = sum(vals) / len(vals)
    for n in terms:  # calls of the term that failed over the whole run (raised, timed out, not a number)
        out[f"reward_failures/{n}"] = sum(h.get(f"reward_failures/{n}", 0.0) for h in hist)
    return out


TOY_KEYS = ("train.lr_theta", "train.lr_w", "train.grpo.max_new_tokens")


def toy_defaults_on_a_real_model(cfg: Config) -> list[str]:
    """A pretrained model trained at the embedded toy's defaults (its learning rates break a real model's chat
    within a few iterations; its 64-token budget truncates nearly every answer): one line naming the keys.
    The base model's own record (init-model's bridgerl_base.json, an input of this stage) says what it is."""
    record = Path(cfg.model.out_dir) / BASE_RECORD.name
    base = json.loads(record.read_text()).get("base", "embedded") if record.is_file() else "embedded"
    if base == "embedded":
        return []
    from bridgerl.config import Config as _C

    default = _C()
    same = [f"{k}={keys.get_attr(cfg, k)}" for k in TOY_KEYS if keys.get_attr(cfg, k) == keys.get_attr(default, k)]
    if not same:
        return []
    return [f"the base model ({base}) trains at the tiny embedded model's defaults ({', '.join(same)}); "
            "they suit a 0.4M-parameter toy, not a pretrained model: set them, or use a preset such as "
            "smollm2-135m (src/bridgerl/presets)"]


def run(cfg: Config, max_steps: int | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train on this process (every rank of a torchrun job runs this); rank 0 writes the outputs."""
    from bridgerl.core import threads

    n_threads = threads.configure(cfg.threads)  # (each torchrun worker runs this too)
    tr = make_trainer(cfg)
    main = tr.is_main  # rank 0 alone writes MLflow, checkpoint bookkeeping and outputs
    log = print if main else (lambda *a, **k: None)
    for w in toy_defaults_on_a_real_model(cfg):
        log(f"warning: {w}", file=sys.stderr)
    key = checkpoint.resume_key(cfg)
    t = cfg.train
    run_id = None
    if resume:
        state = tr.load_checkpoint(t.checkpoint_dir, key)
        if state is not None:
            run_id = state.get("mlflow_run_id")
            log(f"resumed from step {tr.step} ({t.checkpoint_dir})")
        else:
            log(f"no checkpoint in {t.checkpoint_dir}: starting fresh")
    elif main:
        checkpoint.clear(t.checkpoint_dir)
    parallel.barrier()
    stop_at = tr.total_steps if max_steps is None else min(tr.total_steps, max_steps)
    with stage_run(cfg, "train", run_id=run_id, enabled=main) as mlf:
        active = mlf.active_run()  # None when tracking is off
        run_id = active.info.run_id if active is not None else None
        if tr.step == 0 and t.eval_every:
            acc0 = tr.heldout_accuracy()
            tr.history.append({"step": 0, "wall_time_s": 0.0, "heldout_accuracy": acc0, "phase": "init"})
            mlf.log_metric("heldout_accuracy", acc0, step=0)
        bar = tqdm(total=stop_at, initial=tr.step, desc=f"train {t.method}", disable=not (progress and main))
        while tr.step < stop_at:
            m = tr.train_step()
            if t.eval_every and (tr.step % t.eval_every == 0 or tr.step == tr.total_steps):
                m["heldout_accuracy"] = tr.heldout_accuracy()
            tr.history.append(m)
            mlf.log_metrics({k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "step"},
                            step=tr.step)
            bar.update(1)
            bar.set_postfix({k: f"{m[k]:.3f}" for k in ("reward_mean", "sft_nll", "heldout_accuracy") if k in m})
            if tr.step % t.save_every == 0 or tr.step == stop_at:
                tr.save_checkpoint(t.checkpoint_dir, key, t.keep_checkpoints, {"mlflow_run_id": run_id})
        bar.close()
        if tr.step < tr.total_steps:
            log(f"stopped at step {tr.step}/{tr.total_steps} (--max-steps); resume with --resume")
        final = {**_final_metrics(tr), "torch_threads": n_threads}
        exported = tr.export_models()  # all ranks take part (ZeRO-3 gathers); rank 0 gets the policy
        if main:
            with atomic_dir(t.out_dir) as tmp:
                export(exported, tr.tok, tmp)
                write_json(tmp / "bridgerl_train.json",
                           {"method": t.method, "steps": tr.step, "config_digest": cfg.digest()})
            write_json(t.metrics_file, final)
            Path(t.plots_file).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(t.plots_file) as f:
                f.write(_curve_csv(tr.history, curve_fields(cfg)))
            mlf.log_artifact(t.plots_file)
            mlf.log_artifact(t.metrics_file)
            mlf.log_metrics({f"final_{k}": float(v) for k, v in final.items() if isinstance(v, (int, float))})
    tr.close()  # waits for rank 0's outputs, then leaves the process group
    return final
