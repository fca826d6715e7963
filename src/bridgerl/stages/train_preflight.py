"""What `bridgerl train` checks before it loads anything, so a mistake is one line, not a traceback.

- the base model directory (model.out_dir) exists: `bridgerl init-model` ran;
- every module named in train.lora.target_modules exists in that model (matched as peft matches:
  the full module name or its last dotted parts), found on an empty meta-device copy;
- train.prompt_batch is not larger than the RL training set (it would silently repeat prompts);
- with --resume, the newest intact checkpoint was written by the same configuration, and with
  --run NAME there is one (a mistyped run name is an error, not a fresh run).
"""

from __future__ import annotations

import re
from pathlib import Path

from bridgerl.config import Config, ConfigError
from bridgerl.core.io import DataError, iter_jsonl
from bridgerl.core.stage_table import RL_TRAIN


def _module_names(model_dir: Path) -> list[str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return [n for n, _ in model.named_modules() if n]


def check_lora_targets(cfg: Config, model_dir: Path) -> None:
    from bridgerl.core.methods import METHODS

    targets = cfg.train.lora.target_modules
    if not METHODS[cfg.train.method].lora or targets == "all-linear":
        return
    names = _module_names(model_dir)
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, n) for n in names):
            raise ConfigError(f"train.lora.target_modules = {targets!r}: matches no module of {model_dir}")
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        raise ConfigError(f"train.lora.target_modules: no module named {', '.join(map(repr, missing))} in {model_dir} "
                          f"(its modules: {', '.join(leaves)})")


def _runs_with_checkpoints(runs_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in runs_dir.glob("*/checkpoints") if any(p.glob("step-*")))


def check_resume(cfg: Config, run: str | None = None) -> None:
    """The newest intact checkpoint (sha256 against its manifest; no unpickling) has this configuration's
    resume key; `--resume --run NAME` needs a checkpoint of that run (a typo would start a fresh run)."""
    from bridgerl.train import checkpoint

    root = Path(cfg.train.checkpoint_dir)
    if not any(root.glob("step-*")):
        if run is not None:
            others = _runs_with_checkpoints(root.parent.parent)
            raise ConfigError(f"train --resume --run {run}: no checkpoint in {root} to resume from (ad-hoc runs "
                              f"with checkpoints: {', '.join(others) or 'none'}); drop --resume to start it afresh")
        return
    found = checkpoint.newest_intact(root)  # CheckpointError (exit 2) when none is intact
    if found is None:
        return  # a DeepSpeed checkpoint: its engine checks it when it loads
    ckpt, manifest, _ = found
    want = checkpoint.resume_key(cfg)
    if manifest.get("resume_key") != want:
        raise ConfigError(f"train --resume: {ckpt / checkpoint.STATE_FILE} was written by a different configuration "
                          f"(resume key {manifest.get('resume_key')}, now {want}): seed, train.*, model.*, data.* or "
                          f"demos.* changed since; restore them, or train without --resume to start over")


def check(cfg: Config, resume: bool = False, run: str | None = None) -> None:
    from bridgerl.core.methods import METHODS

    model_dir = Path(cfg.model.out_dir)
    if not (model_dir / "config.json").is_file():
        raise DataError(f"model.out_dir = {str(model_dir)!r}: no base model there (no config.json); "
                        f"run `bridgerl init-model` first")
    check_lora_targets(cfg, model_dir)
    if METHODS[cfg.train.method].rl:
        rl = Path(cfg.data.out_dir) / RL_TRAIN.name
        n = sum(1 for _ in iter_jsonl(rl, what="RL training set (run `bridgerl prepare` first)"))
        if cfg.train.prompt_batch > n:
            raise ConfigError(f"train.prompt_batch = {cfg.train.prompt_batch} is larger than the RL training set "
                              f"({n} problems in {rl}): lower it or add data")
    if resume:
        check_resume(cfg, run)
