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
