"""Scoring: each sample judged by its data source's correctness term (`rewards.terms`, by default the built-in
verifier: math-verify against the gold answer); per-item records and metrics.

An item with k samples scores the mean of its samples' correctness (avg@k; pass@1 for k = 1); the
benchmark accuracy is the mean over items. Metrics: accuracy, n, samples, mean output length (tokens
when known, characters always), truncation rate (when known), and the share of samples with no
extractable answer.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from bridgerl.rewards.extract import extract_answer
from bridgerl.rewards.terms import Scorer


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def score(rows: list[dict], prompts: list[str], outputs: list[list[str]], n_tokens: list[list[int | None]],
          truncated: list[list[bool | None]], scorer: Scorer, progress: bool = False,
          desc: str = "score") -> tuple[list[dict], dict]:
    """(per-item records, metrics) for rows[i] answered by outputs[i] (k samples each)."""
    items, item_acc, no_answer = [], [], []
    for r, prompt, outs in tqdm(list(zip(rows, prompts, outputs)), desc=desc, disable=not progress):
        correct = scorer.judge_many([r] * len(outs), outs)
        extracted = [extract_answer(o or "") for o in outs]  # what the record shows as the model's answer
        no_answer.extend(x is None for x in extracted)  # '' is never extracted: None is "no answer"
        acc = float(np.mean(correct)) if correct else 0.0
        item_acc.append(acc)
        single = len(outs) == 1
        items.append({"id": r["id"], "prompt": prompt, "output": outs[0] if single else outs,
                      "extracted": extracted[0] if single else extracted, "answer": r["answer"],
                      "correct": correct[0] if single else correct, "accuracy": acc})
    flat_out = [o for outs in outputs for o in outs]
    flat_tok = [t for ts in n_tokens for t in ts]
    flat_tr = [t for ts in truncated for t in ts]
    metrics = {
        "accuracy": float(np.mean(item_acc)) if item_acc else 0.0,
        "n": len(rows),
        "samples": max((len(o) for o in outputs), default=0),
        "mean_output_tokens": _mean(flat_tok),
        "mean_output_chars": _mean([len(o) for o in flat_out]),
        "truncation_rate": _mean([None if t is None else float(t) for t in flat_tr]),
        "no_answer_rate": _mean([float(x) for x in no_answer]),
    }
    return items, metrics
