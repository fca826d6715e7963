"""Training with the vLLM rollout engine (train.rollout.backend=vllm, the CPU build): the trainer pushes
π(θ, w) into the running engine after every update, the engine's samples and log-probs are those of the
updated policy, and a BRIDGE run from the CLI trains, is killed, and resumes to the same result.

The tiny model has head size 32 (vLLM's CPU attention refuses the other tests' 16).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, REPO, make_cfg, path_overrides

pytestmark = pytest.mark.slow

VLLM = ["model.tiny.hidden_size=64", "model.tiny.num_heads=2", "model.tiny.intermediate_size=128",
        "model.tiny.pretrain_steps=150", "train.rollout.backend=vllm", "train.rollout.kv_cache_gb=1",
        "train.rollout.max_model_len=256", "train.lr_theta=0.01", "train.lr_w=0.01"]
LOGPROB_TOL = 1e-3  # mean |log p(vLLM) − log p(trainer)|, float32 on both sides


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from bridgerl.stages import build_demos, init_model, prepare

    root = tmp_path_factory.mktemp("vllm_project")
    cfg = make_cfg(root, *VLLM)
    prepare.run(cfg)
    init_model.run(cfg)
    build_demos.run(cfg)
    return root


def test_engine_holds_the_updated_policy(project, tmp_path):
    """After BRIDGE steps: vLLM's greedy outputs equal transformers' greedy outputs of π(θ, w) (through the
    LoRA layers, unmerged), and vLLM's log-probs of its samples equal the trainer's forward pass of the updated
    policy, not of the base model."""
    from bridgerl.rollout.hf import HFEngine
    from bridgerl.train.batches import collate
    from bridgerl.train.policy_rollouts import engine_logp_gap
    from bridgerl.train.trainer import make_trainer
    from bridgerl.train.updates import rl_logprobs

    root = tmp_path / "p"
    shutil.copytree(project, root)
    tr = make_trainer(make_cfg(root, *VLLM, "train.method=bridge"))
    try:
        assert tr.rollout.backend == "vllm"
        metrics = [tr.train_step() for _ in range(2)]
        # step 2's rollouts came from the weights after step 1: pushed, or the gap would be that of a stale model
        assert all(m["engine_logp_abs_diff"] < LOGPROB_TOL for m in metrics), metrics
        assert all(m["generated_tokens"] > 0 for m in metrics)
        prompts = [tr._prompt_ids(r["problem"]) for r in tr.val_rows[:8]]
        vllm_greedy = tr.rollout.generate(tr.step, prompts, 1, 0.0, 1.0, 24)
        hf = HFEngine(tr.m.policy, tr.rollout.stop_ids, pad_id=tr.tok.pad_token_id)
        hf_greedy = hf.generate(prompts, 1, 0.0, 1.0, 24)
        assert [g[0].token_ids for g in vllm_greedy] == [g[0].token_ids for g in hf_greedy]
        assert [g[0].finish_reason for g in vllm_greedy] == [g[0].finish_reason for g in hf_greedy]
        # sampled: the engine's log-probs are the updated policy's, far from the base model's
        groups = tr.rollout.generate(tr.step, prompts, 2, 1.0, 1.0, 24, seeds=list(range(len(prompts))))
        flat = [r for g in groups for r in g]
        plist = [p for p in prompts for _ in range(2)]
        batch = collate(plist, [r.token_ids for r in flat], tr.tok.pad_token_id)
        batch.extras["old_logp"] = rl_logprobs(tr.m.policy, batch, tr.cfg)[0]
        assert engine_logp_gap(batch, [r.logprobs for r in flat]) < LOGPROB_TOL
        from bridgerl.model.loading import load_model

        base = load_model(tr.cfg.model.out_dir)
        batch.extras["old_logp"] = rl_logprobs(base, batch, tr.cfg)[0]
        assert engine_logp_gap(batch, [r.logprobs for r in flat]) > 10 * LOGPROB_TOL
    finally:
        tr.close()


def _cmd(root: Path, *extra: str) -> list[str]:
    over = ["train.method=bridge", "train.steps=4", "train.save_every=1", "train.keep_checkpoints=2",
            "train.eval_every=2"]
    args = [sys.executable, "-m", "bridgerl", "train", "-P", str(REPO / "params.yaml"), *extra]
    for o in FAST + path_overrides(root) + VLLM + over:
        args += ["-S", o]
    return args


def test_cli_bridge_with_vllm_resumes_after_kill(project, tmp_path):
    """`bridgerl train` with the vLLM backend: a straight run, and a run SIGKILLed after its second checkpoint
    then resumed, end with the same weights (the engine samples each prompt's group from a seed of the step
    and the prompt's place in the batch, so the resumed run draws the same rollouts)."""
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BRIDGERL_TORCH_THREADS": "1"}
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(project, a)
    shutil.copytree(project, b)
    p = subprocess.run(_cmd(a), env=env, capture_output=True, text=True, cwd=a, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    import csv

    curve = list(csv.DictReader(open(a / "plots" / "train_curve.csv")))
    steps = [r for r in curve if r["phase"] == "bridge"]
    assert len(steps) == 4 and all(float(r["engine_logp_abs_diff"]) < LOGPROB_TOL for r in steps)
    assert sum(1 for r in curve if r["heldout_accuracy"]) == 3  # steps 0, 2, 4: evaluated on the engine too

    proc = subprocess.Popen(_cmd(b), env=env, cwd=b, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = b / "checkpoints" / "train"
    deadline = time.time() + 600
    while time.time() < deadline and not (ck / "step-000002" / "state.pt").exists():
        time.sleep(0.05)
    import psutil

    engine = [p for p in psutil.Process(proc.pid).children(recursive=True) if "VLLM" in " ".join(p.cmdline())]
    assert engine, "the run's vLLM engine processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(engine, timeout=30)  # its engine dies with it (bridgerl.rollout.reaper)
    assert not alive, f"vLLM processes outlived the killed run: {alive}"
    assert not (b / "models" / "trained").exists(), "killed before the end: no exported model yet"
    p = subprocess.run(_cmd(b, "--resume"), env=env, capture_output=True, text=True, cwd=b, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from step" in p.stderr
    wa = load_file(str(next((a / "models" / "trained").glob("*.safetensors"))))
    wb = load_file(str(next((b / "models" / "trained").glob("*.safetensors"))))
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)
