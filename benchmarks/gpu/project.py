"""A throw-away project for the GPU benchmark: a random-weight model directory and the stages' inputs.

`make_model_dir` writes what init-model would (config.json, safetensors weights, generation config and a
tokenizer) for a model built from a shape (a dict of Qwen2Config fields, e.g. bridgerl.train.plan.KNOWN_SHAPES),
with random weights and a tokenizer whose vocabulary is the model's (`byte_tokenizer`), so any sampled id
decodes. `write_inputs` writes what prepare and build-demos would
(rl_train.jsonl, demos.jsonl) as random letters, one token each (fixed token lengths). `GPU_BENCH_SOURCE` is the rewards'
data_source of those prompts: a seeded coin per output (bridgerl.rewards.register), so groups have
signal and the update does real work (all-zero advantages would make the policy-gradient term vanish).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

PAD, EOS, UNK = 0, 1, 2
GPU_BENCH_SOURCE = "gpu_bench_coin"


def _coin(output: str, answer: str, timeout_s: float = 5.0) -> bool:
    return hashlib.sha256(output.encode()).digest()[0] % 2 == 0


def register_reward() -> None:
    from bridgerl import rewards

    rewards.register(GPU_BENCH_SOURCE, _coin)


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def byte_tokenizer(vocab: int):
    """A byte-level BPE tokenizer with no merges and `vocab` ids, built as transformers' Qwen2Tokenizer builds
    its pipeline (a Qwen2 model directory loads its tokenizer as that class, whatever tokenizer_class says):
    ids 0-2 pad/EOS/unk, then the 256 byte symbols, then filler tokens `<tN>` that only decoding meets. A
    letter is one token, so a text of n letters (LETTERS) is n tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = sorted(set(pre_tokenizers.ByteLevel.alphabet()))
    words = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK}
    words.update({c: 3 + i for i, c in enumerate(symbols)})
    words.update({f"<t{i}>": i for i in range(len(words), vocab)})
    tok = Tokenizer(models.BPE(vocab=words, merges=[], unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<eos>", "<unk>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_model_dir(out: Path, shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Random weights from `shape` (built on `device`, in `dtype`) saved as a model directory; returns its size."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = {k: v for k, v in shape.items() if k != "model_type"}
    cfg = Qwen2Config(**shape, bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    with torch.device(device):  # initialized where it will run (fast on a GPU), then cast
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    byte_tokenizer(shape["vocab_size"]).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": n, "dtype": str(dtype).removeprefix("torch.")}


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def write_inputs(data_dir: Path, demos_dir: Path, prompts: int, prompt_tokens: int, demo_tokens: int,
                 seed: int = 0) -> list[dict]:
    """`prompts` RL problems of `prompt_tokens` letters and as many demonstrations of `demo_tokens` letters
    (returned)."""
    rng = random.Random(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    demos_dir.mkdir(parents=True, exist_ok=True)
    rl = [{"id": f"p{i}", "problem": _text(rng, prompt_tokens), "answer": "0",
           "data_source": GPU_BENCH_SOURCE} for i in range(prompts)]
    demos = [{"id": r["id"], "problem": r["problem"], "response": _text(rng, demo_tokens)} for r in rl]
    (data_dir / "rl_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl))
    (demos_dir / "demos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demos))
    return demos
