"""`bridgerl init-model`: the base model directory every later stage starts from.

model.base = "embedded": build the tiny LM (tokenizer trained locally, config, brief pre-training).
Otherwise (a hub id or local directory): load it once and save a standard copy, so the pipeline's
base weights are versioned like any other output.
Output: model.out_dir, a directory loadable by AutoModelForCausalLM/AutoTokenizer.from_pretrained.
"""

from __future__ import annotations

from pathlib import Path

from bridgerl.config import Config
from bridgerl.io import atomic_dir, write_json
from bridgerl.tracking import stage_run


def run(cfg: Config) -> dict:
    out = Path(cfg.model.out_dir)
    with atomic_dir(out) as tmp:
        if cfg.model.base == "embedded":
            from bridgerl.model import tiny

            info = tiny.build(cfg, tmp)
        else:
            from bridgerl.model.loading import load_model, load_tokenizer, resolve_dtype

            tok = load_tokenizer(cfg.model.base, cfg.model.revision)
            # auto keeps the checkpoint's own dtype on disk (transformers' dtype="auto": a bf16 hub model
            # stays bf16, not twice its size in fp32); the compute dtype is chosen where the model runs
            dtype = "auto" if cfg.model.dtype == "auto" else resolve_dtype(cfg.model.dtype)
            model = load_model(cfg.model.base, dtype, cfg.model.revision)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            info = {"params": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype).replace("torch.", "")}
        info.update(base=cfg.model.base, revision=cfg.model.revision)
        write_json(tmp / "bridgerl_base.json", info)
    with stage_run(cfg, "init-model") as mlf:
        mlf.log_metrics({k: float(v) for k, v in info.items() if isinstance(v, (int, float))})
    return info
