"""Batches for the trainer: a resumable epoch sampler, and prompt+response sequences as tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class EpochSampler:
    """Draws batches from a seeded permutation per epoch; its state is (epoch, position)."""

    def __init__(self, n: int, batch: int, seed: int):
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch, self.seed = n, batch, seed
        self.epoch, self.pos = 0, 0

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next(self) -> list[int]:
        out: list[int] = []
        perm = self._perm()
        while len(out) < self.batch:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                perm = self._perm()
            take = min(self.batch - len(out), self.n - self.pos)
            out += perm[self.pos: self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.epoch, self.pos = s["epoch"], s["pos"]


@dataclass
class SeqBatch:
    """Right-padded prompt+response sequences; `mask` marks predicted response tokens ([B, L-1])."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    extras: dict = field(default_factory=dict)  # per-sequence tensors: advantages, old/ref log-probs, …

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: slice | torch.Tensor) -> "SeqBatch":
        return SeqBatch(self.input_ids[idx], self.attention_mask[idx], self.mask[idx],
                        {k: v[idx] for k, v in self.extras.items()})

    def to(self, device) -> "SeqBatch":
        return SeqBatch(self.input_ids.to(device), self.attention_mask.to(device), self.mask.to(device),
                        {k: v.to(device) for k, v in self.extras.items()})

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(prompts: list[list[int]], responses: list[list[int]], pad_id: int, max_len: int | None = None) -> SeqBatch:
    seqs = []
    for p, r in zip(prompts, responses):
        s = (p + r)
        if max_len is not None and len(s) > max_len:
            s = s[:max_len]
        seqs.append((s, len(p)))
    L = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    mask = torch.zeros((len(seqs), L - 1), dtype=torch.float32)
    for i, (s, n_prompt) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
        # token t (t ≥ n_prompt) is predicted at position t-1
        mask[i, max(n_prompt - 1, 0): len(s) - 1] = 1.0
    return SeqBatch(ids, att, mask)


def split(batch: SeqBatch, n: int) -> list[SeqBatch]:
    """Split into n contiguous mini-batches (sizes differ by at most one)."""
    B = len(batch)
    n = max(1, min(n, B))
    bounds = [round(i * B / n) for i in range(n + 1)]
    return [batch.select(slice(bounds[i], bounds[i + 1])) for i in range(n)]
