"""Every preset resolves, validates and can start at the world size it declares (no GPU needed): a preset
whose batches do not divide into its processes x mini-batches never lands again."""

from __future__ import annotations

import pytest
from conftest import REPO

from bridgerl.config import PRESET_DIR, ConfigError, load_config
from bridgerl.train.parallel import check_shardable

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def test_there_are_presets():
    assert "qwen2.5-3b" in PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_starts_at_its_declared_world_size(preset):
    cfg = load_config(REPO / "params.yaml", [], preset)
    d = cfg.train.distributed
    world = d.nproc  # processes on its node (multi-node jobs multiply it by Kubeflow's PET_NNODES)
    check_shardable(cfg, world)  # raises ConfigError naming the keys when it cannot start
    if world > 1:
        assert d.strategy != "none", f"preset {preset}: {world} processes need a ZeRO strategy"


def test_unshardable_batches_are_refused_naming_the_keys():
    cfg = load_config(REPO / "params.yaml", ["train.grpo.mini_batches=5"], "qwen2.5-3b")
    with pytest.raises(ConfigError, match=r"train\.prompt_batch = 64 .* processes \(4\) x train\.grpo\.mini_batches \(5\)"):
        check_shardable(cfg, cfg.train.distributed.nproc)


def test_a_preset_extends_another_and_states_only_what_it_changes(tmp_path):
    # the shipped comparison preset: SmolLM2 and its prompt from smollm2-135m, its own budget and rates
    base, comp = (load_config(REPO / "params.yaml", [], p) for p in ("smollm2-135m", "smollm2-compare"))
    assert comp.model.base == base.model.base and comp.eval.prompt_template == base.eval.prompt_template
    assert comp.train.grpo.kl_coef == base.train.grpo.kl_coef and comp.train.grpo.temperature == base.train.grpo.temperature
    assert comp.train.steps != base.train.steps and comp.train.lr_w == comp.train.lr_theta != base.train.lr_theta
    # a chain of files: nested sections merge key by key, the nearer file wins
    (tmp_path / "a.yaml").write_text("train: {steps: 7, grpo: {group_size: 3, max_new_tokens: 40}}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\ntrain: {{grpo: {{group_size: 6}}}}\n")
    (tmp_path / "c.yaml").write_text(f"extends: {tmp_path / 'b.yaml'}\ntrain: {{lr_w: 0.5}}\n")
    cfg = load_config(REPO / "params.yaml", [], str(tmp_path / "c.yaml"))
    assert (cfg.train.steps, cfg.train.grpo.group_size, cfg.train.grpo.max_new_tokens, cfg.train.lr_w) == (7, 6, 40, 0.5)
    # a circle is refused naming the file and the chain
    (tmp_path / "a.yaml").write_text(f"extends: {tmp_path / 'c.yaml'}\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: extends = .*c\.yaml.*cannot extend itself"):
        load_config(REPO / "params.yaml", [], str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("extends: no-such-preset\n")
    with pytest.raises(ConfigError, match="no such preset"):
        load_config(REPO / "params.yaml", [], str(tmp_path / "d.yaml"))
