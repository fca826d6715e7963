"""`bridgerl prepare`: RL prompts and evaluation sets, deduplicated, split, with a data card.

Outputs (data.out_dir, written atomically as one directory):
  rl_train.jsonl, rl_val.jsonl   {id, problem, answer, data_source, source}
  eval/<benchmark>.jsonl         same fields, one file per eval.benchmarks entry
  data_card.json, data_card.md   counts at each step, sources, answer/length statistics

Input limits (before anything is written): an empty RL or evaluation source, a null or empty problem or
answer, or one longer than data.max_problem_chars is an error naming the file and line.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from bridgerl.config import Config
from bridgerl.core.io import DataError, atomic_dir, write_json, write_jsonl
from bridgerl.core.stage_table import DATA_CARD, DATA_CARD_MD, EVAL_SETS, RL_TRAIN, RL_VAL
from bridgerl.data import sources
from bridgerl.tasks import synthetic
from bridgerl.tracking.runs import stage_run

EVAL_SEED_OFFSET = 1_000_003  # the held-out synthetic test set never shares a seed with training


def _synthetic_rows(cfg: Config, n: int, seed: int, prefix: str) -> list[dict]:
    t = cfg.data.synthetic
    return [{"id": p.id, "problem": p.problem, "answer": p.answer, "data_source": "synthetic", "source": "synthetic",
             "n_ops": p.n_ops}
            for p in synthetic.generate(n, seed, t.min_ops, t.max_ops, t.max_start, t.max_operand, prefix)]


def _rl_rows(cfg: Config) -> tuple[list[dict], dict, dict]:
    rows, counts, origins = [], {}, {}
    for i, spec in enumerate(tqdm(cfg.data.rl_sources, desc="load RL sources")):
        if spec.kind == "embedded":
            got = _synthetic_rows(cfg, cfg.data.synthetic.n_train, cfg.seed, "train")
        else:
            got = sources.load_rows(spec, where=f"data.rl_sources.{i}", max_chars=cfg.data.max_problem_chars)
        counts[spec.name] = len(got)
        origins[spec.name] = sources.provenance(spec, got)
        rows.extend(got)
    return rows, counts, origins


def _eval_rows(cfg: Config, name: str) -> list[dict]:
    spec = sources.resolve(name, cfg.eval.sources)
    if spec.kind == "embedded":
        return _synthetic_rows(cfg, cfg.data.synthetic.n_test, cfg.seed + EVAL_SEED_OFFSET, "test")
    rows = sources.load_rows(spec, where=f"eval.benchmarks[{name}]", max_chars=cfg.data.max_problem_chars)
    for r in rows:
        r["source"] = name
    return rows


def _dedup(rows: list[dict]) -> tuple[list[dict], int]:
    seen, out = set(), []
    for r in rows:
        key = sources.normalize(r["problem"])
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out, len(rows) - len(out)


def _length_stats(rows: list[dict]) -> dict:
    if not rows:
        return {}
    lens = sorted(len(r["problem"]) for r in rows)
    return {"min": lens[0], "median": lens[len(lens) // 2], "max": lens[-1], "mean": sum(lens) / len(lens)}


def _card_md(card: dict) -> str:
    lines = ["# Data card", "", f"Config digest: `{card['config_digest']}`", "", "## RL prompts", "",
             "| step | count |", "|---|---|"]
    for k, v in card["rl"]["steps"].items():
        lines.append(f"| {k} | {v} |")
    lines += ["", f"Sources: {card['rl']['sources']}", ""]
    for name, o in card["rl"].get("provenance", {}).items():
        rev = f", revision `{o['revision']}`" if o.get("revision") else (", **unpinned**" if o["kind"] == "hub" else "")
        lines.append(f"- {name}: {o['kind']} `{o['path']}`{rev}, rows sha256 `{o['rows_sha256'][:16]}`")
    lines += ["", "## Evaluation sets", "", "| benchmark | items | duplicates dropped |",
              "|---|---|---|"]
    for k, v in card["eval"].items():
        lines.append(f"| {k} | {v['n']} | {v['duplicates_dropped']} |")
    return "\n".join(lines) + "\n"


def run(cfg: Config) -> dict:
    out_dir = Path(cfg.data.out_dir)
    rl, per_source, origins = _rl_rows(cfg)
    steps = {"loaded": len(rl)}
    rl, dup = _dedup(rl)
    steps["after_dedup"] = len(rl)
    eval_sets, eval_card, eval_keys = {}, {}, set()
    for name in cfg.eval.benchmarks:
        rows, d = _dedup(_eval_rows(cfg, name))
        eval_sets[name] = rows
        eval_card[name] = {"n": len(rows), "duplicates_dropped": d, "problem_chars": _length_stats(rows)}
        spec = sources.resolve(name, cfg.eval.sources)
        if spec.kind != "embedded":
            eval_card[name]["provenance"] = sources.provenance(spec, rows)
        eval_keys |= {sources.normalize(r["problem"]) for r in rows}
    rl = [r for r in rl if sources.normalize(r["problem"]) not in eval_keys]
    steps["after_decontamination"] = len(rl)
    rng = random.Random(cfg.seed)
    rng.shuffle(rl)
    if cfg.data.max_problems:
        rl = rl[: cfg.data.max_problems]
    steps["after_max_problems"] = len(rl)
    n_val = int(round(len(rl) * cfg.data.val_fraction))
    val, train = rl[:n_val], rl[n_val:]
    if not train:
        raise DataError(f"data: no RL training problems left after filtering (steps: {steps})")
    steps.update(train=len(train), val=len(val))
    card = {
        "config_digest": cfg.digest(),
        "rl": {"sources": per_source, "provenance": origins, "steps": steps, "duplicates_dropped": dup,
               "data_sources": dict(Counter(r["data_source"] for r in train)), "problem_chars": _length_stats(train)},
        "eval": eval_card,
    }
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / RL_TRAIN.name, train)
        write_jsonl(tmp / RL_VAL.name, val)
        (tmp / EVAL_SETS.name).mkdir()
        for name, rows in eval_sets.items():
            write_jsonl(tmp / EVAL_SETS.name / f"{name}.jsonl", rows)
        write_json(tmp / DATA_CARD.name, card)
        (tmp / DATA_CARD_MD.name).write_text(_card_md(card))
    with stage_run(cfg, "prepare") as mlf:
        mlf.log_metrics({f"rl_{k}": v for k, v in steps.items()})
        mlf.log_metrics({f"eval_{k}_n": v["n"] for k, v in eval_card.items()})
        mlf.log_artifact(str(out_dir / DATA_CARD_MD.name))
    return card
