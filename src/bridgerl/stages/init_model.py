"""`bridgerl init-model`: the base model directory every later stage starts from.

model.base = "embedded": build the tiny LM (tokenizer trained locally, config, brief pre-training).
Otherwise (a hub id, a local directory, a GGUF file: bridgerl.model.source): load it once and save a plain
Hugging Face copy in model.dtype with its tokenizer, chat template and every end-of-sequence id in its
generation config, so the pipeline's base weights are versioned like any other output; a local source's
sha256 is recorded in bridgerl_base.json.
Output: model.out_dir, a directory loadable by AutoModelForCausalLM/AutoTokenizer.from_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bridgerl.config import Config
from bridgerl.core.io import atomic_dir, digest, write_json
from bridgerl.core.stage_table import BASE_RECORD
from bridgerl.tracking.runs import stage_run


def run(cfg: Config) -> dict:
    out = Path(cfg.model.out_dir)
    with atomic_dir(out) as tmp:
        if cfg.model.base == "embedded":
            from bridgerl.model import tiny

            info = tiny.build(cfg, tmp)
        else:
            info = _convert(cfg, tmp)
        info.update(base=cfg.model.base, revision=cfg.model.revision)
        write_json(tmp / BASE_RECORD.name, info)
    with stage_run(cfg, "init-model") as mlf:
        mlf.log_metrics({k: float(v) for k, v in info.items() if isinstance(v, (int, float))})
    return info


def _convert(cfg: Config, tmp: Path) -> dict:
    from bridgerl.model import source
    from bridgerl.model.loading import load_model, load_tokenizer, resolve_dtype

    src = source.resolve(cfg.model)
    if src.gguf_file:
        # GGUF is dequantized to fp32; auto keeps that (CPU compute is fp32; on GPU the trainer casts)
        dtype = torch.float32 if cfg.model.dtype == "auto" else resolve_dtype(cfg.model.dtype)
        model, tok = source.load_gguf(src, dtype)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        tok = load_tokenizer(src.path, cfg.model.revision)
        # auto keeps the checkpoint's own dtype on disk (transformers' dtype="auto": a bf16 hub model
        # stays bf16, not twice its size in fp32); the compute dtype is chosen where the model runs
        dtype = "auto" if cfg.model.dtype == "auto" else resolve_dtype(cfg.model.dtype)
        model = load_model(src.path, dtype, cfg.model.revision)
    eos = source.fix_generation_config(model, tok)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    info = {"params": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype).replace("torch.", ""),
            "eos_token_ids": eos, "chat_template": bool(getattr(tok, "chat_template", None))}
    local = source.local_path(cfg.model)
    if local is not None and local.is_file():
        info.update(source_file=str(local), source_sha256=digest(local))
    return info
