"""Generation backends for evaluation: Hugging Face transformers (default) and vLLM (GPU, optional).

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
    """'hf' or 'vllm' for eval.backend = auto | hf | vllm; vllm needs the package and a CUDA device."""
    if requested == "hf":
        return "hf"
    has_vllm = vllm_installed() if has_vllm is None else has_vllm
    has_cuda = cuda_available() if has_cuda is None else has_cuda
    if requested == "vllm":
        if not has_vllm:
            raise ConfigError("eval.backend = 'vllm': the vllm package is not installed (pip install vllm), "
                              "or set eval.backend to hf/auto")
        if not has_cuda:
            raise ConfigError("eval.backend = 'vllm': no CUDA device; set eval.backend to hf/auto")
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

        from bridgerl.generation import generate

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
    """vLLM offline inference (GPU); prompts are passed as token ids so both backends see the same input."""

    name = "vllm"

    def __init__(self, model_dir: str, e: EvalConfig, dtype_name: str = "auto", seed: int = 0):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.llm = LLM(model=model_dir, tokenizer=model_dir, dtype=dtype_name, seed=seed,
                       gpu_memory_utilization=e.vllm_gpu_memory_utilization,
                       tensor_parallel_size=e.vllm_tensor_parallel_size, max_model_len=e.vllm_max_model_len)
        self.e, self.seed = e, seed
        self.progress = True

    def generate(self, prompts: list[str], k: int, temperature: float, top_p: float) -> list[list[Sample]]:
        from vllm import SamplingParams

        params = SamplingParams(n=k, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=self.e.max_new_tokens, seed=self.seed)
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        results = self.llm.generate(inputs, params, use_tqdm=self.progress)
        return [[Sample(o.text, len(o.token_ids), o.finish_reason == "length") for o in r.outputs] for r in results]


def load_backend(name: str, model_dir: str, e: EvalConfig, dtype_name: str, seed: int):
    cls = {"hf": HFBackend, "vllm": VLLMBackend}[name]
    return cls(model_dir, e, dtype_name, seed)
