"""Pure loss functions: per-token log-probs, GRPO (clipped ratio + k3 KL), SFT log-likelihood.

Conventions: every objective J is a quantity to *maximize*; a loss is its negative. Token tensors
are [batch, seq-1] aligned with the predicted tokens (`input_ids[:, 1:]`), masked by `mask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   with_entropy: bool = False, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token_t | tokens_<t) for t = 1..L-1 under softmax(logits / temperature), and optionally the
    per-token entropy of that distribution (no grad). RL terms use the sampling temperature (as TRL and
    verl do: the ratio, KL and gradient are those of the distribution the rollouts came from)."""
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
