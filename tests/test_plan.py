"""`bridgerl plan`: the per-GPU memory budget from the configuration (no GPU, no hub)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, run_cli

PARAMS = str(REPO / "params.yaml")


def _plan(*args: str, check: bool = False):
    p = run_cli("plan", "-P", PARAMS, "--preset", "qwen2.5-3b", "--json", *args, check=check, timeout=300)
    return p, (json.loads(p.stdout) if p.stdout.strip() else None)


def test_paper_preset_fits_on_four_80gb_gpus():
    """The 3B preset on 4 GPUs (ZeRO-3, bf16): the issue's training state (26.4 GB = 24.5 GiB for BRIDGE,
    13.9 GB = 12.9 GiB for RL-zero) and, with its micro-batches and checkpointing, a peak within 80 GiB."""
    p, bridge = _plan()
    assert p.returncode == 0 and bridge["fits"], p.stderr
    assert bridge["training_state_gb"] == pytest.approx(26.4e9 / 2**30, rel=0.01)
    assert bridge["training_phase_gb"] <= 80 and bridge["rollout_phase_gb"] <= 80
    _, rl = _plan("-S", "train.method=rl_zero")
    assert rl["training_state_gb"] == pytest.approx(13.9e9 / 2**30, rel=0.01)
    assert bridge["training_state_gb"] / rl["training_state_gb"] == pytest.approx(1.90, abs=0.01)
    items = {r["item"] for r in bridge["rows"]}
    assert {"shadow θ̂: optimizer", "reference π_ref", "vLLM (weights + KV cache)"} <= items
    assert not any(i.startswith("shadow") for i in (r["item"] for r in rl["rows"]))


def test_without_micro_batches_it_does_not_fit_and_says_so():
    p, out = _plan("-S", "train.micro_batch_tokens=null", "-S", "train.gradient_checkpointing=false",
                   "-S", "train.logprob_chunk_tokens=null")
    assert p.returncode == 1 and not out["fits"]
    rows = {r["item"]: r["gb"] for r in out["rows"]}
    assert rows["output layer (full logits)"] > 80 and rows["activations (one micro-batch)"] > 80
    # the table form says it too
    t = run_cli("plan", "-P", PARAMS, "--preset", "qwen2.5-3b", "-S", "train.micro_batch_tokens=null", check=False)
    assert t.returncode == 1 and "fits in 80 GiB: NO" in t.stdout


def test_more_gpus_and_checkpointing_lower_the_budget():
    _, four = _plan()
    _, eight = _plan("--nproc", "8")
    assert eight["training_state_gb"] == pytest.approx(four["training_state_gb"] / 2, rel=1e-3)
    _, no_ckpt = _plan("-S", "train.gradient_checkpointing=false")
    act = {r["item"]: r["gb"] for r in no_ckpt["rows"]}["activations (one micro-batch)"]
    assert act > 5 * {r["item"]: r["gb"] for r in four["rows"]}["activations (one micro-batch)"]


def test_unknown_model_is_a_one_line_error():
    p = run_cli("plan", "-P", PARAMS, "-S", "model.base=someone/unknown-model", "-S", "model.out_dir=/nonexistent",
                check=False)
    assert p.returncode == 2 and "model.base" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_model_dir_of_another_base_is_not_read(tmp_path):
    """model.out_dir holding the embedded tiny model (a local `dvc repro`) does not stand in for the preset's Qwen."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 2,
                                                      "num_hidden_layers": 1, "intermediate_size": 64,
                                                      "vocab_size": 320}))
    (tmp_path / "bridgerl_base.json").write_text(json.dumps({"base": "embedded"}))
    _, here = _plan("-S", f"model.out_dir={tmp_path}")
    _, table = _plan()
    assert here["training_state_gb"] == table["training_state_gb"] > 20


def test_offloaded_shadow_brings_the_paper_preset_to_rl_zero_state():
    """train.bridge.shadow_offload under ZeRO-3 (4 GPUs): BRIDGE's training state within 1.25x RL-zero's (the
    issue's goal; 1.90x in memory); what it costs instead is said: the whole θ̂ during its pass, and host memory
    (fp32 master and gradients of the 3B θ̂ on each process, its AdamW moments sharded)."""
    _, off = _plan("-S", "train.bridge.shadow_offload=true")
    _, rl = _plan("-S", "train.method=rl_zero")
    assert off["training_state_gb"] / rl["training_state_gb"] <= 1.25
    rows = {r["item"]: r["gb"] for r in off["rows"]}
    assert rows["shadow θ̂ during its pass"] == pytest.approx(2 * 3.086e9 * 2 / 2**30, rel=0.01)
    # fp32 weights and gradients on each process, AdamW's moments sharded over the 4 ranks
    assert off["host_memory_gb"] == pytest.approx(3.086e9 * (8 + 8 / 4) / 2**30, rel=0.01)
    assert rl["host_memory_gb"] == 0
    assert off["fits"]


def test_hf_rollouts_count_the_generation_copy_and_its_kv_cache():
    """backend hf: the generation copy (P x 2 B, kept: both phases) and generate's KV cache (rollout phase only)."""
    _, vllm = _plan("-S", "train.rollout.sleep=true")
    _, hf = _plan("-S", "train.rollout.backend=hf")
    rows = {r["item"]: r["gb"] for r in hf["rows"]}
    assert "vLLM (weights + KV cache)" not in rows
    copy = rows["HF generation copy (weights)"]
    assert copy == pytest.approx(3.086e9 * 2 / 2**30, rel=0.01)
    kv = rows["HF generate KV cache (rollout phase)"]  # 80 rollouts per rank x (256 + 3000) tokens, 36 layers, 2 x 256
    assert kv == pytest.approx(80 * 3256 * 36 * 2 * 256 * 2 / 2**30, rel=0.01)
    assert hf["training_phase_gb"] == pytest.approx(vllm["training_phase_gb"] + copy, abs=0.02)
    assert hf["rollout_phase_gb"] == pytest.approx(hf["training_state_gb"] + copy + kv + 3.0, abs=0.02)
    _, live = _plan("-S", "train.rollout.backend=hf", "-S", "train.rollout.hf_generation_copy=false")
    assert "HF generation copy (weights)" not in {r["item"] for r in live["rows"]}


def test_cpu_device_counts_fp32_the_process_baseline_and_keeps_vllm_out():
    """--device cpu: the checkpoint's fp32 (4 B weights, 8 B AdamW moments in one process), no CUDA reserve
    but the process's baseline, vLLM's CPU engine in its own process (not in the trainer's peak) and the
    merged copy a weight sync makes."""
    _, gpu = _plan("-S", "train.distributed.strategy=none", "-S", "train.distributed.nproc=1")
    _, cpu = _plan("-S", "train.distributed.strategy=none", "-S", "train.distributed.nproc=1", "--device", "cpu",
                   "--gpu-memory-gb", "24")
    g, c = ({r["item"]: r for r in x["rows"]} for x in (gpu, cpu))
    assert c["policy θ: weights"]["gb"] == pytest.approx(2 * g["policy θ: weights"]["gb"], rel=0.01)
    assert "reserve (context, NCCL, buckets)" not in c and "process baseline (Python, torch, data)" in c
    assert c["vLLM engine process (not in this peak)"]["gb"] == 0 and "vLLM (weights + KV cache)" not in c
    assert c["merged weights for the engine (rollout phase)"]["gb"] == pytest.approx(c["policy θ: weights"]["gb"])
    assert c["activations (one micro-batch)"]["gb"] > 2 * g["activations (one micro-batch)"]["gb"]
    assert cpu["device"] == "cpu" and not cpu["fits"]  # a 3B BRIDGE run is no laptop job
    p, _ = _plan("--device", "tpu")
    assert p.returncode == 2 and "--device" in p.stderr
