"""Preset precedence: defaults < preset < what the user wrote in params.yaml < `-S` overrides."""

from __future__ import annotations

from pathlib import Path

import yaml

from bridgerl.config import Config, load_config, user_written

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, edit) -> Path:
    """The repository's params.yaml with the preset switched on and `edit` applied (as a user or
    `dvc exp run -S` would change the file)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["preset"] = "qwen2.5-3b"
    edit(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_shipped_params_state_the_defaults():
    """The rule "a value equal to its default was not written by the user" needs params.yaml == defaults."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert user_written(raw) == []
    assert load_config(REPO / "params.yaml").model_dump() == Config().model_dump()


def test_untouched_params_take_the_preset(tmp_path):
    cfg = load_config(_params(tmp_path, lambda r: None))
    assert cfg.train.lr_theta == 5e-7 and cfg.train.eval_items == 128
    assert cfg.eval.prompt_template.startswith("{problem}")  # not the tiny model's form from params.yaml
    assert cfg.demos.max_problems is None and cfg.registry.model_name == "bridge-qwen2.5-3b"


def test_user_value_in_params_wins_over_preset(tmp_path):
    def edit(r):
        r["train"]["lr_theta"] = "1e-6"  # how PyYAML reads `lr_theta: 1e-6`: a string, validated to a float
        r["train"]["bridge"]["lam"] = 0.3
        r["eval"]["benchmarks"] = ["math500"]
    cfg = load_config(_params(tmp_path, edit))
    assert cfg.train.lr_theta == 1e-6 and cfg.train.bridge.lam == 0.3 and cfg.eval.benchmarks == ["math500"]
    assert cfg.train.lr_w == 5e-7 and cfg.model.base == "Qwen/Qwen2.5-3B"  # the rest still from the preset


def test_override_wins_over_params_and_preset(tmp_path):
    p = _params(tmp_path, lambda r: r["train"].__setitem__("lr_theta", 2e-6))
    assert load_config(p, ["train.lr_theta=3e-6"]).train.lr_theta == 3e-6
    # -S can also set a key back to its default value, which params.yaml cannot do against a preset
    assert load_config(p, ["train.eval_items=100"]).train.eval_items == 100


def test_preset_chosen_by_override_or_argument(tmp_path):
    p = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["lr_theta"] = 1e-6
    p.write_text(yaml.safe_dump(raw))
    for cfg in (load_config(p, ["preset=qwen2.5-3b"]), load_config(p, preset="qwen2.5-3b")):
        assert cfg.preset == "qwen2.5-3b" and cfg.model.base == "Qwen/Qwen2.5-3B" and cfg.train.lr_theta == 1e-6
