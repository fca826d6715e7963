"""The one table of methods (bridgerl.core.methods) is what the configuration, model building, the
trainer's dispatch, `bridgerl compare` and the compare pipeline read."""

from __future__ import annotations

import pytest
from conftest import make_cfg, run_cli

from bridgerl.config import Config, ConfigError
from bridgerl.core.methods import METHOD_NAMES, METHODS
from bridgerl.train.updates import UPDATES


def test_config_allows_exactly_the_table(tmp_path):
    schema = Config.model_json_schema()
    allowed = schema["$defs"]["TrainConfig"]["properties"]["method"]["enum"]
    assert tuple(allowed) == METHOD_NAMES
    with pytest.raises(ConfigError, match="train.method"):
        make_cfg(tmp_path, "train.method=grpo_plus")


def test_every_method_is_consistent():
    for m in METHODS.values():
        assert m.update in UPDATES and m.phase(10**6, 1) in UPDATES
        assert m.rl or m.sft
        assert not (m.shadow or m.trains_w) or m.lora, f"{m.name}: shadow and w need the LoRA adapter"
        assert not m.shadow or m.trains_w, f"{m.name}: the shadow only serves w's upper-level gradient"
        assert not m.sft_in_minibatches or (m.rl and m.sft)
        if m.sft_first:
            assert m.phase(0, 1) == "sft" and m.phase(1, 1) == m.update
    assert METHODS["bridge_frozen_w"].lora and not METHODS["bridge_frozen_w"].trains_w


def test_models_follow_the_table(tmp_path):
    """The models built for a method are the ones its row declares (tiny random model, no training)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bridgerl.train.models import build_models

    tiny = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)
    for name, m in METHODS.items():
        torch.manual_seed(0)
        built = build_models(make_cfg(tmp_path, f"train.method={name}", "train.grpo.kl_coef=0.01"),
                             LlamaForCausalLM(tiny))
        assert bool(built.lora) == m.lora and (built.shadow is not None) == m.shadow
        assert (built.ref is not None) == m.rl
        assert all(p.requires_grad == m.trains_w for p in built.lora)
        groups = [g["name"] for g in built.param_groups(make_cfg(tmp_path, f"train.method={name}"))]
        assert groups == ["theta"] + (["shadow"] if m.shadow else []) + (["w"] if m.trains_w else [])


def test_compare_lists_every_method():
    p = run_cli("compare", "--help")
    text = " ".join(p.stdout.split())
    for name in METHOD_NAMES:
        assert name in text


def test_compare_pipeline_defaults_to_every_method():
    import yaml
    from conftest import REPO

    from pipelines import compare_pipeline

    assert compare_pipeline.METHODS == list(METHOD_NAMES)
    spec = next(yaml.safe_load_all((REPO / "pipelines" / "compare_pipeline.yaml").read_text()))
    default = spec["root"]["inputDefinitions"]["parameters"]["methods"]["defaultValue"]
    assert default == list(METHOD_NAMES)
