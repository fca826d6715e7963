"""The trainer's rollout engine (train.rollout): started once per training process, fed π(θ, w).

`PolicyRollouts` picks the backend (bridgerl.rollout.factory), starts it on first use and, before the
first rollout batch (or held-out evaluation) after each update, pushes the policy's weights into it:
the LoRA adapter w merged into the base weights θ (`merged_weights`; never the shadow θ̂), gathered one
parameter at a time under ZeRO-3, so a rollout batch costs one gather of each parameter however many
tokens it generates. Backends:

- vllm: a colocated vLLM engine started from the base model directory; it returns its own log-probs of
  the sampled tokens (the trainer logs how far they are from its own forward pass).
- hf with `hf_generation_copy` (default): transformers `generate` on a plain copy of the model that holds
  the merged weights: no LoRA on the decode path and, under ZeRO-3, no collective per decoded token. The copy
  is made from the policy in memory (its architecture and generation config), never read from a directory.
- hf without it: `generate` through the training policy itself (today's memory; under ZeRO-3 with
  `synced_gpus`, every decoded token gathers every layer).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch

from bridgerl.config import Config
from bridgerl.rollout.base import Rollout, RolloutEngine, stop_token_ids
from bridgerl.rollout.factory import make_engine, select_backend
from bridgerl.rollout.weights import merged_weights
from bridgerl.train.batches import SeqBatch

log = logging.getLogger(__name__)


class PolicyRollouts:
    def __init__(self, cfg: Config, train_engine, tokenizer, device: torch.device, rows_per_batch: int):
        self.cfg, self.train_engine, self.tok, self.device = cfg, train_engine, tokenizer, device
        self.batch_size = max(rows_per_batch, cfg.eval.batch_size)
        self._engine: RolloutEngine | None = None
        self._version: int | None = None  # the trainer step whose weights the engine holds
        # benchmarks only (benchmarks/bench_trainer.py --lengths fixed): every rollout runs to max_new_tokens,
        # so methods whose policies answer at different lengths are timed on the same work
        self.ignore_eos = False

    @functools.cached_property
    def backend(self) -> str:
        return select_backend(self.cfg.train.rollout.backend, model_dir=self.cfg.model.out_dir)

    @property
    def live_policy(self) -> bool:
        return self.backend == "hf" and not self.cfg.train.rollout.hf_generation_copy

    @functools.cached_property
    def stop_ids(self) -> list[int]:
        return stop_token_ids(self.cfg.model.out_dir, self.tok)

    @property
    def engine(self) -> RolloutEngine:
        if self._engine is None:
            self._engine = self._start()
        return self._engine

    def _start(self) -> RolloutEngine:
        policy = self.train_engine.policy_module()
        dtype = next(policy.parameters()).dtype
        if self.live_policy:
            from bridgerl.rollout.hf import HFEngine

            return HFEngine(self.train_engine.models.policy, self.stop_ids, pad_id=self.tok.pad_token_id,
                            batch_size=self.batch_size, generate_kwargs=self.train_engine.generate_kwargs())
        copy = None
        if self.backend == "hf":  # a plain model of the policy's architecture to hold the merged weights
            from bridgerl.model.loading import plain_copy

            copy = plain_copy(self.train_engine.models.policy, dtype, device=self.device)
        else:
            log.info("rollouts: starting a colocated vLLM engine on %s", self.cfg.model.out_dir)
        return make_engine(self.backend, self.cfg.model.out_dir, self.cfg.train.rollout,
                           dtype=str(dtype).removeprefix("torch."), seed=self.cfg.seed, model=copy,
                           pad_id=self.tok.pad_token_id, batch_size=self.batch_size, stop_ids=self.stop_ids)

    def sync(self, version: int) -> None:
        """All ranks: make the engine hold the policy's current weights (once per `version`)."""
        engine = self.engine
        if self.live_policy or self._version == version:
            return
        gather = self.train_engine.gathered if self.train_engine.partitioned else None
        engine.update_weights(merged_weights(self.train_engine.policy_module(), gather=gather))
        self._version = version

    def generate(self, version: int, prompt_ids: Sequence[Sequence[int]], n: int, temperature: float,
                 top_p: float, max_new_tokens: int, seeds: Sequence[int] | None = None) -> list[list[Rollout]]:
        """All ranks: `n` rollouts per prompt from π(θ, w) as of trainer step `version`."""
        self.sync(version)
        out = self.engine.generate(prompt_ids, n, temperature, top_p, max_new_tokens, seeds=seeds,
                                   ignore_eos=self.ignore_eos)
        sleep = getattr(self.engine, "sleep", None)  # vLLM on GPU with sleep mode: free its memory for the update
        if sleep is not None:
            sleep()
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def engine_logp_gap(batch: SeqBatch, engine_logp: list[list[float]]) -> float:
    """Mean |log p_engine − log p_trainer| over the sampled tokens (the trainer's in batch.extras['old_logp']);
    the engine's are placed at the batch's response positions (batch.mask, in row order)."""
    ours = batch.extras["old_logp"].detach().float().cpu()
    mask = batch.mask.cpu()
    theirs = torch.zeros_like(ours)
    theirs[mask.bool()] = torch.tensor([x for lp in engine_logp for x in lp], dtype=theirs.dtype)
    return float(((ours - theirs).abs() * mask).sum() / mask.sum().clamp(min=1))
