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


JUDGE_BLOCK = 64  # items judged per call: the user terms' workers share a block; progress per block


def _judge_all(rows: list[dict], outputs: list[list[str]], scorer: Scorer, progress: bool, desc: str) -> list[bool]:
    """Every sample's verdict, in order (blocks of items, so that a user term's worker pool runs them
    concurrently)."""
    out: list[bool] = []
    with tqdm(total=len(rows), desc=desc, disable=not progress) as bar:
        for lo in range(0, len(rows), JUDGE_BLOCK):
            block = list(zip(rows[lo:lo + JUDGE_BLOCK], outputs[lo:lo + JUDGE_BLOCK]))
            out += scorer.judge_many([r for r, outs in block for _ in outs], [o for _, outs in block for o in outs])
            bar.update(len(block))
    return out


def score(rows: list[dict], prompts: list[str], outputs: list[list[str]], n_tokens: list[list[int | None]],
          truncated: list[list[bool | None]], scorer: Scorer, progress: bool = False,
          desc: str = "score") -> tuple[list[dict], dict]:
    """(per-item records, metrics) for rows[i] answered by outputs[i] (k samples each)."""
    items, item_acc, no_answer = [], [], []
    verdicts = iter(_judge_all(rows, outputs, scorer, progress, desc))
    for r, prompt, outs in zip(rows, prompts, outputs):
        correct = [next(verdicts) for _ in outs]
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
