"""init-model with model.dtype=auto keeps a checkpoint's dtype (a bf16 model is not re-saved in fp32)."""

from __future__ import annotations

import json

import pytest
from conftest import make_cfg


def _tensor_dtypes(model_dir) -> set[str]:
    from safetensors import safe_open

    out = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            out |= {str(st.get_slice(k).get_dtype()) for k in st.keys()}
    return out


@pytest.mark.parametrize("dtype, want", [("auto", {"BF16"}), ("float32", {"F32"})])
def test_auto_keeps_the_checkpoint_dtype(tiny_project, tmp_path, dtype, want):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bridgerl.stages import init_model

    src = tmp_path / "bf16_model"  # a stand-in for a hub checkpoint published in bf16
    AutoModelForCausalLM.from_pretrained(tiny_project / "models/base", dtype=torch.bfloat16).save_pretrained(src)
    AutoTokenizer.from_pretrained(tiny_project / "models/base").save_pretrained(src)
    assert _tensor_dtypes(src) == {"BF16"}

    cfg = make_cfg(tmp_path, f"model.base={src}", f"model.dtype={dtype}")
    info = init_model.run(cfg)
    out = tmp_path / "models/base"
    assert _tensor_dtypes(out) == want
    assert json.loads((out / "bridgerl_base.json").read_text())["dtype"] == {"BF16": "bfloat16", "F32": "float32"}[
        want.pop()] == info["dtype"]
