"""Batches for the trainer: a resumable epoch sampler, and prompt+response sequences as tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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

    @property
    def lengths(self) -> torch.Tensor:
        """Real tokens per row (rows are right-padded)."""
        return self.attention_mask.sum(1)

    def trimmed(self) -> "SeqBatch":
        """The same rows cut to the longest one (per-token extras too)."""
        L = self.input_ids.shape[1]
        n = max(int(self.lengths.max()), 2) if len(self) else L
        if n >= L:
            return self
        return SeqBatch(self.input_ids[:, :n], self.attention_mask[:, :n], self.mask[:, : n - 1],
                        {k: v[:, : n - 1] if v.dim() >= 2 and v.shape[1] == L - 1 else v
                         for k, v in self.extras.items()})


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


class Micro(NamedTuple):
    idx: torch.Tensor  # its rows in the batch
    batch: SeqBatch
    share: float  # its share of the batch's loss denominator (tokens or sequences)


def micro_batches(batch: SeqBatch, max_tokens: int | None, token_level: bool,
                  packed: bool = False, count: int | None = None) -> list[Micro]:
    """Cut a (mini-)batch into micro-batches for gradient accumulation.

    Rows go longest first (length bucketing) into micro-batches of at most `max_tokens` computed positions
    (rows x the longest row; `packed`: the real tokens), each trimmed to its longest row; a row longer
    than `max_tokens` is a micro-batch alone. Each micro-batch's loss weight (extras['loss_scale'],
    1 when absent) is multiplied by its share of the batch's loss denominator (response tokens when
    `token_level`, else sequences), so that the micro-batch losses sum to the batch's loss and their
    accumulated gradients to its gradient. `max_tokens` None: the batch itself, unchanged.
    `count`: at least this many micro-batches (the largest ones are halved; ranks of a ZeRO job must
    run the same number of passes, bridgerl.train.updates asks for the ranks' maximum).
    """
    B = len(batch)
    if max_tokens is None:
        return [Micro(torch.arange(B), batch, 1.0)]
    lens = batch.lengths.tolist()
    order = sorted(range(B), key=lambda i: -lens[i])  # stable: equal lengths keep their order
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        cost = (sum(lens[j] for j in g) + lens[i] if packed else (len(g) + 1) * lens[g[0]]) if g else 0
        if g is None or cost > max_tokens:
            groups.append([i])
        else:
            g.append(i)
    while count is not None and len(groups) < min(count, B):
        cost = [len(g) * lens[g[0]] if not packed else sum(lens[j] for j in g) for g in groups]
        k = max((i for i in range(len(groups)) if len(groups[i]) > 1), key=lambda i: cost[i])
        g = groups[k]
        groups[k: k + 1] = [g[: len(g) // 2], g[len(g) // 2:]]
    total = float(batch.mask.sum()) if token_level else float(B)
    out = []
    for g in groups:
        idx = torch.tensor(g, dtype=torch.long)
        mb = batch.select(idx.to(batch.input_ids.device)).trimmed()
        share = (float(mb.mask.sum()) if token_level else float(len(mb))) / max(total, 1.0)
        scale = mb.extras.get("loss_scale")
        base = scale.double() if scale is not None else torch.ones(len(mb), dtype=torch.float64,
                                                                   device=mb.input_ids.device)
        mb.extras["loss_scale"] = base * share  # float64: the shares add up to 1 to float64 precision
        out.append(Micro(idx, mb, share))
    return out


def assemble(parts: list[tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor) -> torch.Tensor:
    """Per-token tensors of micro-batches ([n, l] each, rows `idx`) put back into the batch's layout `like`."""
    out = torch.zeros_like(like)
    for idx, t in parts:
        out[idx.to(out.device), : t.shape[1]] = t.to(out.dtype)
    return out


def padding_fraction(batch: SeqBatch, max_tokens: int | None = None, packed: bool = False) -> float:
    """Share of the positions the model computes that are padding: the batch as one padded block
    (max_tokens None, not packed), in length-bucketed micro-batches, or packed (0)."""
    real = batch.n_tokens
    if packed:
        return 0.0
    computed = sum(m.batch.input_ids.numel() for m in micro_batches(batch, max_tokens, True)) \
        if max_tokens is not None else batch.input_ids.numel()
    return 1.0 - real / max(computed, 1)
