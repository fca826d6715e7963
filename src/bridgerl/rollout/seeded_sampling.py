"""Rollouts that do not depend on how the batch is split: each rollout row is sampled with its own seed
from (run seed, iteration, global row index), by the Gumbel-max trick with counter-based noise, so the
same rollouts come out for any number of processes (train.distributed.seeded_rollouts; the
equivalence tests of 1 vs N processes use it)."""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors: a counter-based random number generator."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def row_seeds(seed: int, step: int, rows: list[int]) -> list[int]:
    """One 32-bit seed per rollout row from (run seed, iteration, global row index)."""
    r = torch.tensor(rows, dtype=torch.int64)
    s = _mix32(_mix32(torch.tensor(seed, dtype=torch.int64) * 0x9E3779B1 + step) + r * 0x85EBCA6B)
    return s.tolist()


def sample_seeds(prompt_seed: int, n: int) -> list[int]:
    """The seeds of a prompt's n samples, from the prompt's seed."""
    return row_seeds(prompt_seed, 0, list(range(n)))


class SeededSampling:
    """A transformers logits processor that, with greedy decoding, samples from softmax(logits/T)
    (top-p filtered) by the Gumbel-max trick with noise hashed from (row seed, token index, vocab id):
    a row's sample depends on its seed only, not on the batch it is generated in."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float = 1.0):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        self.seeds = torch.tensor(seeds, dtype=torch.int64)
        self.t = 0
        warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.warpers(input_ids, scores.float())
        dev = scores.device
        base = _mix32(self.seeds.to(dev) * 0x27D4EB2F + self.t)  # [B]
        vocab = torch.arange(scores.shape[-1], device=dev, dtype=torch.int64)
        h = _mix32(_mix32(base[:, None] ^ (vocab[None, :] * 0x165667B1)))
        u = (h.to(torch.float64) + 0.5) / 2.0**32
        self.t += 1
        return scores + (-torch.log(-torch.log(u))).to(scores.dtype)
