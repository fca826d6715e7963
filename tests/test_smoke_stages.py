"""Each stage runs on the tiny project and writes the files its contract promises."""

from __future__ import annotations

import json

from conftest import make_cfg

from bridgerl.core.io import read_jsonl


def test_prepare_outputs(tiny_project):
    d = tiny_project / "data" / "prepared"
    train = read_jsonl(d / "rl_train.jsonl", required=("id", "problem", "answer", "data_source"))
    val = read_jsonl(d / "rl_val.jsonl")
    test = read_jsonl(d / "eval" / "synthetic.jsonl")
    card = json.loads((d / "data_card.json").read_text())
    assert card["rl"]["steps"]["train"] == len(train) and card["rl"]["steps"]["val"] == len(val)
    problems = {r["problem"] for r in train}
    assert not problems & {r["problem"] for r in test}, "eval problems leaked into RL training"
    assert len(problems) == len(train), "duplicates survived"


def test_train_bridge_exports_plain_model(project):
    from transformers import AutoModelForCausalLM

    from bridgerl.stages import train

    cfg = make_cfg(project)
    final = train.run(cfg, progress=False)
    assert final["steps"] == 3
    model = AutoModelForCausalLM.from_pretrained(project / "models" / "trained")
    keys = list(model.state_dict())
    assert keys and not [k for k in keys if "lora" in k.lower()]
