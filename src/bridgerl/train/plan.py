"""`bridgerl plan`: the per-GPU memory budget of a training configuration, before launching it
(`--device cpu`: the training process's peak memory on a CPU-only machine).

From the configuration alone (no GPU, no hub): the model's shape (a local config.json, else the small
table below), the method's models (policy, shadow θ̂, LoRA w, reference), the engine (one process or
DeepSpeed ZeRO-2/3 on `nproc` processes, offload), the precision, the micro-batch and the rollout engine's
share, it adds up what one GPU holds:

- training state: weights, gradients and optimizer state of θ (and θ̂, w), the frozen reference. Under
  DeepSpeed bf16 each trained parameter costs 2 (weights) + 2 (gradients) + 12 (fp32 master + AdamW's
  two moments) bytes, ZeRO-2 partitioning the last two across ranks and ZeRO-3 all three; in one
  process plain torch keeps AdamW's moments in the weights' dtype.
- activations of one micro-batch (train.micro_batch_tokens, else the rank's whole mini-batch padded to
  its longest sequence): per token and decoder layer about 20h + 4·kv + 8·I bytes in bf16 (the saved
  inputs of the norms, projections, attention and the SwiGLU MLP, flash-style attention); with
  gradient checkpointing one layer's worth plus each layer's 2h-byte input.
- the output layer: full logits (bf16 + their fp32 copy + the entropy's softmax: 10 bytes per token and
  vocabulary entry) or, chunked (train.logprob_chunk_tokens), one chunk of them (14 bytes: + its gradient).
- the rollout engine: vLLM's share of the GPU (its weights and KV cache); with rollout.sleep it is
  freed while training, so the rollout phase and the training phase are checked separately. With
  transformers (backend hf): the generation copy's weights (kept) and generate's KV cache (rollout phase).
- a reserve for the CUDA context, NCCL and DeepSpeed's buckets (an estimate, stated as such).

On a CPU (`device="cpu"`) the same terms are counted in the checkpoint's dtype (fp32 unless model.dtype
says bf16/fp16: activations twice the bf16 figure plus the attention weights SDPA's CPU kernel keeps,
heads x sequence per token and layer; logits 12 bytes per entry), the reserve is the
process's own baseline (Python, torch, transformers: ~0.6 GiB measured after imports), and vLLM's CPU
engine is another process (its weights + rollout.kv_cache_gb, shown, not added to the trainer's peak);
pushing new weights to it takes a merged copy of the policy in the trainer (rollout phase).

Estimates, not measurements: docs/scale.md says how they compare with measured runs.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from bridgerl.config import Config, ConfigError
from bridgerl.core.methods import METHODS
from bridgerl.core.stage_table import BASE_RECORD

GB = 1024**3
RESERVE_GB = 3.0  # CUDA context + NCCL + allocator fragmentation + DeepSpeed buckets (estimate)
CPU_BASELINE_GB = 0.75  # a CPU training process before its models: Python, torch, transformers, data (estimate)

# model shapes for hub ids the plan knows without the hub (Qwen2.5 base and instruct share them)
_QWEN = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6)
KNOWN_SHAPES: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B": dict(_QWEN, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                              num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": dict(_QWEN, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "Qwen/Qwen2.5-3B": dict(_QWEN, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                            num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": dict(_QWEN, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            tie_word_embeddings=False),
}


def model_config(cfg: Config):
    """The transformers config of the model to train: a local directory's config.json, else the table."""
    from transformers import AutoConfig, LlamaConfig

    if cfg.model.base and (Path(cfg.model.base) / "config.json").is_file():  # a local model directory
        return AutoConfig.from_pretrained(cfg.model.base)
    out = Path(cfg.model.out_dir)
    record = out / BASE_RECORD.name  # init-model's record: model.out_dir may hold another base model
    if (out / "config.json").is_file() and record.is_file() and json.loads(record.read_text()).get("base") == cfg.model.base:
        return AutoConfig.from_pretrained(out)
    base = cfg.model.base.removesuffix("-Instruct")
    if base in KNOWN_SHAPES:
        shape = dict(KNOWN_SHAPES[base])
        return AutoConfig.for_model(shape.pop("model_type"), **shape)
    if cfg.model.base == "embedded":
        t = cfg.model.tiny
        return LlamaConfig(vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                           num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
                           num_key_value_heads=t.num_heads, tie_word_embeddings=True)
    raise ConfigError(f"model.base = {cfg.model.base!r}: no config.json there or in model.out_dir, and not one of "
                      f"the plan's known shapes ({', '.join(KNOWN_SHAPES)})")


def count_params(mcfg, lora_r: int, targets) -> tuple[int, int]:
    """(base parameters, LoRA parameters) of the model built on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mcfg)
    n = sum(p.numel() for p in model.parameters())
    out = model.get_output_embeddings()
    lora = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is out:
            continue
        if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
            lora += lora_r * (mod.in_features + mod.out_features)
    return n, lora


def _width(text: str) -> int:
    """Columns `text` takes (combining marks, as in θ̂, take none)."""
    return sum(not unicodedata.combining(ch) for ch in text)


@dataclass
class Plan:
    rows: list[tuple[str, float, str]]  # (item, GB per GPU, how)
    train_gb: float
    rollout_gb: float
    gpu_gb: float
    state_gb: float
    host_gb: float = 0.0  # host memory per process: an offloaded shadow θ̂, offloaded optimizer state
    device: str = "gpu"

    @property
    def fits(self) -> bool:
        return max(self.train_gb, self.rollout_gb) <= self.gpu_gb

    def as_dict(self) -> dict:
        return {"rows": [{"item": r, "gb": round(g, 2), "how": h} for r, g, h in self.rows],
                "training_state_gb": round(self.state_gb, 2), "training_phase_gb": round(self.train_gb, 2),
                "rollout_phase_gb": round(self.rollout_gb, 2), "gpu_memory_gb": self.gpu_gb, "fits": self.fits,
                "host_memory_gb": round(self.host_gb, 2), "device": self.device}

    def table(self) -> str:
        w = max(_width(r) for r, _, _ in self.rows)
        unit = "GiB/GPU" if self.device == "gpu" else "GiB"
        lines = [f"{'item'.ljust(w)}  {unit:>8}  how", "-" * (w + 40)]
        lines += [f"{r}{' ' * (w - _width(r))}  {g:8.2f}  {h}" for r, g, h in self.rows]
        lines += ["-" * (w + 40),
                  f"{'training state'.ljust(w)}  {self.state_gb:8.2f}",
                  f"{'peak, training phase'.ljust(w)}  {self.train_gb:8.2f}",
                  f"{'peak, rollout phase'.ljust(w)}  {self.rollout_gb:8.2f}",
                  f"{'host memory per process'.ljust(w)}  {self.host_gb:8.2f}",
                  f"fits in {self.gpu_gb:g} GiB{' (the machine)' if self.device == 'cpu' else ''}: "
                  f"{'yes' if self.fits else 'NO'} "
                  f"(headroom {self.gpu_gb - max(self.train_gb, self.rollout_gb):.1f} GiB)"]
        return "\n".join(lines)


def plan(cfg: Config, gpu_gb: float = 80.0, nproc: int | None = None, prompt_tokens: int = 256,
         device: str = "gpu") -> Plan:
    """The per-GPU budget of `cfg` on `nproc` processes (default train.distributed.nproc); device "cpu":
    one training process's peak on a CPU-only machine with `gpu_gb` GiB of memory."""
    if device not in ("gpu", "cpu"):
        raise ConfigError(f"plan --device {device!r}: expected gpu or cpu")
    cpu = device == "cpu"
    t, d = cfg.train, cfg.train.distributed
    W = nproc or d.nproc
    m = METHODS[t.method]
    mcfg = model_config(cfg)
    P, lora = count_params(mcfg, t.lora.r, t.lora.target_modules)
    lora = lora if m.lora else 0
    if cpu:  # the checkpoint's dtype: fp32 (init-model's default on CPU) unless a 16-bit one is asked for
        b = 2 if cfg.model.dtype in ("bfloat16", "float16") else 4
    else:
        b = 4 if cfg.model.dtype == "float32" else 2  # bf16 on GPU unless float32 is asked for
    ds = d.strategy != "none"
    stage = {"none": 0, "zero2": 2, "zero3": 3}[d.strategy]
    opt_b = (12 if t.optimizer == "adamw" else 4) if ds else (2 * b if t.optimizer == "adamw" else 0)
    part_w = W if stage == 3 else 1
    part_go = W if stage >= 2 else 1
    rows: list[tuple[str, float, str]] = []
    host = 0.0

    def add(item, nbytes, how):
        rows.append((item, nbytes / GB, how))

    def trained(name, n):
        nonlocal host
        add(f"{name}: weights", 0 if d.offload and stage == 3 else n * b / part_w,
            f"{n / 1e9:.3f}B x {b} B" + (f" / {part_w} ranks" if part_w > 1 else ""))
        add(f"{name}: gradients", n * b / part_go, f"{b} B" + (f" / {part_go} ranks" if part_go > 1 else ""))
        add(f"{name}: optimizer", 0 if d.offload else n * opt_b / part_go,
            f"{opt_b} B" + (" (fp32 master + AdamW moments)" if ds else " (AdamW moments)")
            + (f" / {part_go} ranks" if part_go > 1 else "") + (" (host: offload)" if d.offload else ""))
        host += n * opt_b / part_go if d.offload else 0

    def offloaded_shadow(n):
        """θ̂ in host memory (bridgerl.train.shadow): weights and gradients whole on every process (under ZeRO
        in fp32, as master weights), the optimizer's moments sharded over the ranks under ZeRO."""
        nonlocal host
        master = 4 if ds else b
        moments = (8 if ds else 2 * b) if t.optimizer == "adamw" else 0
        shards = W if ds else 1
        host += n * (2 * master + moments / shards)
        add("shadow θ̂ (host memory)", 0, f"{n / 1e9:.3f}B x ({2 * master} B weights + gradients"
            + (f" + {moments} B optimizer" + (f" / {shards} ranks" if shards > 1 else "") if moments else "")
            + ") in host memory")

    trained("policy θ", P)
    if m.shadow and t.bridge.shadow_offload:
        offloaded_shadow(P)
    elif m.shadow:
        trained("shadow θ̂", P)
    if lora:
        trained("LoRA w" if m.trains_w else "LoRA w (frozen)", lora)
    if m.rl and t.grpo.kl_coef > 0:
        add("reference π_ref", P * b / part_w, f"{b} B" + (f" / {part_w} ranks" if part_w > 1 else ""))
    state = sum(g for _, g, _ in rows) * GB

    # one micro-batch's activations and logits
    h, L, inter = mcfg.hidden_size, mcfg.num_hidden_layers, mcfg.intermediate_size
    kv = mcfg.num_key_value_heads * (h // mcfg.num_attention_heads)
    seq = prompt_tokens + t.grpo.max_new_tokens if m.rl else t.sft_max_tokens
    seqs = max(1, t.prompt_batch * t.grpo.group_size // (t.grpo.mini_batches * W)) if m.rl \
        else max(1, t.demo_batch // W)
    tokens = min(t.micro_batch_tokens, seqs * seq) if t.micro_batch_tokens else seqs * seq
    per_layer = (20 * h + 4 * kv + 8 * inter) * b // 2  # the bf16 figure, doubled in fp32
    if cpu:  # SDPA's math kernel on CPU keeps each query's attention weights (no flash kernel)
        per_layer += mcfg.num_attention_heads * seq * b
    if t.gradient_checkpointing:
        act = tokens * (L * 2 * h + per_layer)
        how = f"{tokens} tokens x ({L} layers x 2h + one layer) (checkpointing)"
    else:
        act = tokens * L * per_layer
        how = f"{tokens} tokens x {L} layers x {per_layer / 1024:.0f} KiB"
    add("activations (one micro-batch)", act, how)
    V = mcfg.vocab_size
    if t.logprob_chunk_tokens:
        c = min(t.logprob_chunk_tokens, tokens)
        add("output layer (one chunk)", c * V * 14, f"{c} positions x {V} x 14 B (chunked)")
    else:
        lb = 12 if b == 4 else 10  # logits + their fp32 log-softmax + the entropy's softmax
        add("output layer (full logits)", tokens * V * lb, f"{tokens} tokens x {V} x {lb} B")
    if m.shadow and t.bridge.shadow_offload:
        add("shadow θ̂ during its pass", 2 * P * b, "weights + gradients, whole, brought from host memory")
    reserve = CPU_BASELINE_GB if cpu else RESERVE_GB
    add("process baseline (Python, torch, data)" if cpu else "reserve (context, NCCL, buckets)", reserve * GB,
        "estimate")
    transient = sum(g for r, g, _ in rows[len(rows) - (4 if m.shadow and t.bridge.shadow_offload else 3):]) * GB

    # the rollout engine
    r = t.rollout
    vllm = r.backend in ("vllm", "auto")
    share = r.gpu_memory_utilization * gpu_gb * GB if vllm and not cpu else 0.0
    sync = 0.0
    if vllm and cpu:  # vLLM's CPU engine: another process; the trainer builds a merged copy to push weights
        kv_how = (f"~{(P * b + r.kv_cache_gb * GB) / GB:.2f} GiB in its own process: weights + kv_cache_gb "
                  f"{r.kv_cache_gb}") if r.kv_cache_gb else "its own process: weights + vLLM's default KV cache"
        add("vLLM engine process (not in this peak)", 0, kv_how)
        sync = P * b
        add("merged weights for the engine (rollout phase)", sync, f"{P / 1e9:.3f}B x {b} B, during a weight sync")
    elif vllm:
        kv_bytes = max(share - P * b, 0)
        kv_tokens = kv_bytes / (2 * L * kv * b)
        add("vLLM (weights + KV cache)", share,
            f"gpu_memory_utilization {r.gpu_memory_utilization}: KV cache ~{kv_tokens / 1e3:.0f}k tokens"
            + ("; freed while training (sleep)" if r.sleep else "; kept while training"))
    hf_copy = hf_kv = 0.0
    if r.backend == "hf":  # transformers generate in the training process (bridgerl.rollout.hf)
        n_rollouts = max(1, t.prompt_batch * t.grpo.group_size // W)
        if r.hf_generation_copy:
            hf_copy = P * b
            add("HF generation copy (weights)", hf_copy, f"{P / 1e9:.3f}B x {b} B, whole on every rank; kept")
        hf_kv = n_rollouts * seq * 2 * L * kv * b
        add("HF generate KV cache (rollout phase)", hf_kv,
            f"{n_rollouts} rollouts x {seq} tokens x {L} layers x 2 x {kv} x {b} B; freed after generate")
    train_gb = (state + transient + (0 if r.sleep else share) + hf_copy) / GB
    rollout_gb = (state + share + hf_copy + hf_kv + sync + reserve * GB) / GB
    return Plan(rows, train_gb, rollout_gb, gpu_gb, state / GB, host / GB, device)


def main(cfg: Config, gpu_gb: float, nproc: int | None, as_json: bool, prompt_tokens: int = 256,
         device: str = "gpu") -> tuple[str, bool]:
    p = plan(cfg, gpu_gb, nproc, prompt_tokens, device)
    if as_json:
        return json.dumps(p.as_dict()), p.fits
    W = nproc or cfg.train.distributed.nproc
    head = (f"{cfg.model.base}, method {cfg.train.method}, {W} x {device.upper()}, strategy {cfg.train.distributed.strategy}"
            f"{' + offload' if cfg.train.distributed.offload else ''}, micro_batch_tokens "
            f"{cfg.train.micro_batch_tokens}, gradient_checkpointing {cfg.train.gradient_checkpointing}")
    return head + "\n" + p.table(), p.fits


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf
