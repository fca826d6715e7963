"""Pure loss functions: per-token log-probs, GRPO (clipped ratio + k3 KL), SFT log-likelihood.

Conventions: every objective J is a quantity to *maximize*; a loss is its negative. Token tensors
are [batch, seq-1] aligned with the predicted tokens (`input_ids[:, 1:]`), masked by `mask`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from bridgerl.train.parallel import all_reduce, is_distributed


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   with_entropy: bool = False, temperature: float = 1.0, mask: torch.Tensor | None = None,
                   chunk_tokens: int | None = None, pack: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token_t | tokens_<t) for t = 1..L-1 under softmax(logits / temperature), and optionally the
    per-token entropy of that distribution (no grad). RL terms use the sampling temperature (as TRL and
    verl do: the ratio, KL and gradient are those of the distribution the rollouts came from).

    With `chunk_tokens` (or `pack`) the full [B, L, V] logits never exist: the decoder runs to its hidden
    states, and the output layer is applied to at most `chunk_tokens` positions at a time, only at the
    positions `mask` selects ([B, L-1]; None: all), its logsumexp in fp32; the chunk is recomputed in the
    backward pass (torch.utils.checkpoint), so what is kept per token is a log-prob, not a vocabulary row.
    Unselected positions are 0. `pack`: the rows (right-padded) are concatenated into one padding-free
    row with position ids restarting at each sequence (transformers masks attention per sequence).
    Under DeepSpeed the whole computation runs inside the engine's forward (`ViaEngine.run`)."""
    if chunk_tokens is None and not pack:
        return _full_logprobs(model, input_ids, attention_mask, with_entropy, temperature)
    fn = functools.partial(_chunked_logprobs, input_ids=input_ids, attention_mask=attention_mask,
                           with_entropy=with_entropy, temperature=temperature, mask=mask,
                           chunk_tokens=chunk_tokens or input_ids.numel(), pack=pack)
    run = getattr(model, "run_inside", None)  # DeepSpeed: inside the engine's forward (its backward hooks)
    return run(fn) if run is not None else fn(model)


def _full_logprobs(model, input_ids, attention_mask, with_entropy, temperature):
    """The reference computation: the model's full logits, upcast to fp32."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 up to fp32; fp64 kept
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:]
    logz = torch.logsumexp(logits, dim=-1)
    logp = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - logz
    ent = None
    if with_entropy:
        with torch.no_grad():
            p = torch.softmax(logits, dim=-1)
            ent = logz - (p * logits).sum(-1)
    return logp, ent


def _head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                   with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: the output layer on [n, H] hidden states; log-probs of `targets` (and entropy, no grad)."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logp = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if not with_entropy:
        return logp, logp.new_zeros(())
    with torch.no_grad():
        ent = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, ent


def _chunked_logprobs(module, input_ids, attention_mask, with_entropy, temperature, mask, chunk_tokens, pack):
    B, L = input_ids.shape
    decoder, head = module.get_decoder(), module.get_output_embeddings()
    sel = (attention_mask[:, 1:] > 0) if mask is None else (mask > 0)
    rows, cols = sel.nonzero(as_tuple=True)  # prediction positions (row, t): hidden t predicts token t+1
    targets = input_ids[rows, cols + 1]
    if pack:
        keep = attention_mask > 0
        ids = input_ids[keep][None]  # [1, T]: the real tokens of every row, concatenated
        pos = (torch.cumsum(keep, 1) - 1)[keep][None]  # restarting at 0 in each row
        hidden = decoder(input_ids=ids, position_ids=pos, attention_mask=None, use_cache=False).last_hidden_state[0]
        where = (torch.cumsum(keep.flatten(), 0) - 1).view(B, L)  # (row, t) -> its place in the packed row
        h = hidden[where[rows, cols]]
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        h = hidden[rows, cols]
    logps, ents = [], []
    n_chunks = -(-h.shape[0] // chunk_tokens)
    if is_distributed():  # ZeRO-3 gathers the head's weight at each call: every rank makes as many
        n_chunks = int(all_reduce([float(n_chunks)], "max")[0])
    for start in range(0, n_chunks * chunk_tokens, chunk_tokens):  # (the extra chunks are empty)
        hc, tc = h[start: start + chunk_tokens], targets[start: start + chunk_tokens]
        if torch.is_grad_enabled():  # keep [n, H] per chunk; recompute the [n, V] logits in backward
            lp, en = checkpoint(_head_logprobs, head, hc, tc, temperature, with_entropy, use_reentrant=False)
        else:
            lp, en = _head_logprobs(head, hc, tc, temperature, with_entropy)
        logps.append(lp)
        ents.append(en)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    logp = torch.zeros(B, L - 1, dtype=dtype, device=input_ids.device)
    logp = logp.index_put((rows, cols), torch.cat(logps) if logps else logp.new_zeros(0))
    ent = None
    if with_entropy:
        ent = torch.zeros(B, L - 1, dtype=dtype, device=input_ids.device)
        if ents:
            ent[rows, cols] = torch.cat(ents).detach()
    return logp, ent


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """'token': mean over all response tokens of the batch; 'sequence': mean over sequences of token means."""
    if mode == "token":
        return masked_mean(per_token, mask)
    per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.mean()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: reward minus its group mean, divided by the group std when `scale`."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π ‖ π_ref) per token: exp(r) − r − 1 with r = log π_ref − log π."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


@dataclass
class GrpoOut:
    loss: torch.Tensor  # = −J_RL
    kl: torch.Tensor
    clip_frac: torch.Tensor
    ratio_mean: torch.Tensor


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2, clip_eps_high: float | None = None, ref_logp: torch.Tensor | None = None,
              kl_coef: float = 0.0, agg: str = "token") -> GrpoOut:
    """Clipped-ratio policy-gradient loss with a k3 KL penalty; returns −J_RL and diagnostics."""
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + hi) * adv)
    per_tok = -surr
    pg = aggregate(per_tok, mask, agg)
    if ref_logp is not None and kl_coef > 0:
        kl_tok = k3_kl(logp, ref_logp)
        kl = aggregate(kl_tok, mask, agg)
        loss = pg + kl_coef * kl
    else:
        kl = torch.zeros((), device=logp.device)
        loss = pg
    with torch.no_grad():
        clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + hi) & (adv > 0))
        clip_frac = masked_mean(clipped.float(), mask)
        ratio_mean = masked_mean(ratio, mask)
    return GrpoOut(loss, kl.detach(), clip_frac, ratio_mean)


def sft_objective(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """J_SFT: mean log-likelihood of the demonstration's response tokens (token-level mean)."""
    return masked_mean(logp, mask)
