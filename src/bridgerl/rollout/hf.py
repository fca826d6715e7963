"""`HFEngine`: rollouts with transformers `generate` on a plain (non-PEFT) generation model.

The engine owns a generation copy of the policy; `update_weights` copies π(θ, w)'s merged weights into
it once per rollout batch, so decoding runs on merged weights instead of through the LoRA adapters.
Generation stops at every EOS id of the model (`stop_token_ids`), not only the tokenizer's. With seeds
(one per prompt) every row is sampled with its own seed (`SeededSampling`), so a group's rollouts do not
depend on the batch it is generated in or on the number of processes; without, from torch's global RNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from bridgerl.rollout.base import Rollout, RolloutEngine, stop_token_ids
from bridgerl.rollout.seeded_sampling import SeededSampling, sample_seeds


class HFEngine(RolloutEngine):
    name = "hf"

    def __init__(self, model: torch.nn.Module, stop_ids: Sequence[int], pad_id: int | None = None,
                 batch_size: int = 64, generate_kwargs: dict | None = None):
        self.model = model
        self.stop_ids = list(stop_ids)
        self.pad_id = self.stop_ids[0] if pad_id is None else pad_id
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})  # e.g. synced_gpus under ZeRO-3

    @classmethod
    def from_dir(cls, model_dir: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 **kwargs) -> HFEngine:
        from bridgerl.model.loading import load_model, load_tokenizer

        tok = load_tokenizer(model_dir)
        model = load_model(model_dir, dtype, device=device)
        return cls(model, stop_token_ids(model_dir, tok), pad_id=tok.pad_token_id, **kwargs)

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = self.model.state_dict(keep_vars=True)  # tied names (lm_head/embed) share one tensor
        for name, t in named_tensors:
            if name not in params:
                raise KeyError(f"update_weights: {name!r} is not a parameter of the generation model")
            params[name].data.copy_(t.to(params[name].device, params[name].dtype))

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seeds: Sequence[int] | None = None,
                 ignore_eos: bool = False) -> list[list[Rollout]]:
        rows = [list(p) for p in prompt_ids for _ in range(n)]
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                      **self.generate_kwargs)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        row_seeds = None
        if seeds is not None and temperature > 0:  # a seed per row: a row's sample does not depend on its batch
            if len(seeds) != len(prompt_ids):
                raise ValueError(f"seeds: {len(seeds)} given for {len(prompt_ids)} prompts (one per prompt)")
            row_seeds = [s for seed in seeds for s in sample_seeds(int(seed), n)]
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        out: list[Rollout] = []
        for i in range(0, len(rows), self.batch_size):
            kw = kwargs
            if row_seeds is not None:
                kw = {**kwargs, "logits_processor": [SeededSampling(row_seeds[i: i + self.batch_size], temperature,
                                                                    top_p)]}
            out += self._generate_batch(rows[i: i + self.batch_size], device, kw)
        self.model.train(was_training)
        return [out[j * n: (j + 1) * n] for j in range(len(prompt_ids))]

    def _generate_batch(self, rows: list[list[int]], device, kwargs: dict) -> list[Rollout]:
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for k, r in enumerate(rows):  # left padding
            ids[k, L - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[k, L - len(r):] = 1
        seqs = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        stops = set(self.stop_ids)
        res = []
        for row in seqs[:, L:].tolist():
            cut = next((t for t, tok in enumerate(row) if tok in stops), None)
            if cut is None or kwargs.get("min_new_tokens"):
                res.append(Rollout(row[: kwargs["max_new_tokens"]], None, "length"))
            else:
                res.append(Rollout(row[: cut + 1], None, "stop"))
        return res
