"""Configuration: params.yaml validates, overrides apply, bad values fail naming key and value."""

from __future__ import annotations

import pytest
from conftest import REPO, run_cli

from bridgerl.config import ConfigError, load_config
from bridgerl.stages.resolve_config import check_paths


def test_repo_params_and_presets_validate():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.train.method == "bridge" and cfg.model.base == "embedded"
    paper = load_config(REPO / "params.yaml", preset="qwen2.5-3b")
    assert paper.model.base == "Qwen/Qwen2.5-3B"
    assert paper.train.lora.r == 16 and paper.train.bridge.lam == 0.5 and paper.train.grpo.group_size == 5
    assert [b for b in paper.eval.benchmarks] == ["math500", "minerva_math", "olympiadbench", "aime24", "amc23"]


def test_override_types_and_nesting():
    cfg = load_config(REPO / "params.yaml", ["train.bridge.lam=0.25", "train.method=sft", "eval.benchmarks=[a, b]"])
    assert cfg.train.bridge.lam == 0.25 and cfg.train.method == "sft" and cfg.eval.benchmarks == ["a", "b"]


@pytest.mark.parametrize("override, key, value", [
    ("train.bridge.lam=1.5", "train.bridge.lam", "1.5"),
    ("train.lr_theta=-0.1", "train.lr_theta", "-0.1"),
    ("train.method=ppo", "train.method", "'ppo'"),
    ("train.grpo.group_size=1", "train.grpo.group_size", "1"),
    ("train.stpes=3", "train.stpes", "3"),
])
def test_bad_values_name_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "params.yaml", [override])
    msg = str(e.value)
    assert key in msg and value in msg


def test_missing_local_file_is_reported(tmp_path):
    cfg = load_config(REPO / "params.yaml", [
        "data.rl_sources=[{name: mine, kind: local, path: /nonexistent/problems.jsonl}]"])
    with pytest.raises(ConfigError, match=r"data.rl_sources.0.path = '/nonexistent/problems.jsonl'"):
        check_paths(cfg)


def test_cli_rejects_before_work(tmp_path):
    p = run_cli("train", "-P", str(REPO / "params.yaml"), "-S", "train.bridge.lam=2", cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert "train.bridge.lam = 2" in p.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlruns.db").exists()
