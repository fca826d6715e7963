"""`bridgerl evaluate`: generate on each configured benchmark, verify answers, write metrics;
or, with --predictions, score generations made elsewhere without loading a model (into --out,
default runs/predictions/, never the pipeline's outputs).

Inputs: train.out_dir (or --model); benchmark rows from data.out_dir/eval/<benchmark>.jsonl, else the
configured source (see bridgerl.evaluation.benchmarks).
Outputs: eval.out_dir/<benchmark>.jsonl (per item: id, prompt, output, extracted, answer, correct,
accuracy), eval.metrics_file: {benchmarks: {name: {accuracy, n, samples, mean_output_tokens,
mean_output_chars, truncation_rate, no_answer_rate}}, avg_accuracy, model_sha256, ...} (register checks
model_sha256 against the model it registers); logged to MLflow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bridgerl.config import Config
from bridgerl.core.io import DataError, atomic_dir, digest, read_json, write_json, write_jsonl
from bridgerl.evaluation import backends, benchmarks, predictions, scoring
from bridgerl.model.prompts import render_prompt
from bridgerl.rewards.terms import Scorer
from bridgerl.tracking.runs import stage_run


def sampling(cfg: Config, name: str) -> dict:
    """k, temperature and top_p for one benchmark: greedy/temperature for k = 1, sampling for k > 1."""
    e = cfg.eval
    k = e.samples_for(name)
    if k == 1:
        return {"k": 1, "temperature": e.temperature, "top_p": e.top_p}
    return {"k": k, "temperature": e.sampling_temperature, "top_p": e.sampling_top_p}


def _summary(results: dict, **extra) -> dict:
    avg = float(np.mean([m["accuracy"] for m in results.values()])) if results else 0.0
    return {"benchmarks": results, "avg_accuracy": avg, **extra}


def _log(cfg: Config, summary: dict, out_files: list[Path], metrics_file: str | None = None) -> None:
    with stage_run(cfg, "evaluate") as mlf:
        for name, m in summary["benchmarks"].items():
            mlf.log_metrics({f"{name}_{k}": float(v) for k, v in m.items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)})
        mlf.log_metric("avg_accuracy", summary["avg_accuracy"])
        mlf.log_artifact(metrics_file or cfg.eval.metrics_file)
        for f in out_files:
            mlf.log_artifact(str(f), artifact_path="eval")


def run(cfg: Config, model_dir: str | None = None, progress: bool = True) -> dict:
    """Evaluate a model directory on eval.benchmarks; returns the metrics summary."""
    e = cfg.eval
    model_dir = model_dir or cfg.train.out_dir
    if not Path(model_dir).exists() and (model_dir == cfg.train.out_dir or str(model_dir).startswith(("/", "."))):
        raise DataError(f"{model_dir}: model directory not found (did `bridgerl train` run?)")
    data = {name: benchmarks.load(cfg, name) for name in e.benchmarks}  # fail on bad data before loading a model
    scorer = Scorer.judging(cfg)
    for name, (rows, origin) in data.items():  # each data source has a correctness term, before any work
        scorer.check_sources(rows, f"benchmark {name} ({origin})")
    backend_name = backends.select_backend(e.backend)
    gen = backends.load_backend(backend_name, str(model_dir), e, cfg.model.dtype, cfg.seed)
    gen.progress = progress
    results, per_item = {}, {}
    for name in tqdm(e.benchmarks, desc="benchmarks", disable=not progress):
        rows, origin = data[name]
        rows = rows[: e.max_items] if e.max_items else rows
        s = sampling(cfg, name)
        prompts = [render_prompt(r["problem"], gen.tokenizer, e.prompt_template, e.use_chat_template) for r in rows]
        samples = gen.generate(prompts, s["k"], s["temperature"], s["top_p"])
        items, metrics = scoring.score(
            rows, prompts, [[x.text for x in ss] for ss in samples], [[x.n_tokens for x in ss] for ss in samples],
            [[x.truncated for x in ss] for ss in samples], scorer, progress, desc=f"score {name}")
        metrics.update(temperature=s["temperature"], top_p=s["top_p"], source=origin)
        results[name], per_item[name] = metrics, items
    if hasattr(gen, "close"):
        gen.close()  # the vLLM engine's processes
    summary = _summary(results, model=str(model_dir), backend=backend_name, max_new_tokens=e.max_new_tokens,
                       config_digest=cfg.digest(),
                       model_sha256=digest(model_dir) if Path(model_dir).is_dir() else None)
    with atomic_dir(e.out_dir) as tmp:
        for name, items in per_item.items():
            write_jsonl(tmp / f"{name}.jsonl", items)
    write_json(e.metrics_file, summary)
    _log(cfg, summary, [Path(e.out_dir) / f"{n}.jsonl" for n in per_item])
    return summary


PREDICTIONS_OUT = "runs/predictions"


def score_predictions(cfg: Config, predictions_file: str, benchmark: str, data: str | None = None,
                      merge: bool = False, out: str | Path = PREDICTIONS_OUT) -> dict:
    """Score a JSONL of {id, output} for one benchmark (no model): out/<benchmark>.jsonl and out/eval.json.

    Never the pipeline's eval.out_dir / eval.metrics_file: those belong to the model in train.out_dir,
    and `bridgerl register` would take these scores for its. Items of the benchmark without a
    prediction are left out of the accuracy and counted in `missing`. With merge, the benchmark is
    added to an existing out/eval.json.
    """
    e = cfg.eval
    rows, origin = benchmarks.load(cfg, benchmark, data)
    scorer = Scorer.judging(cfg)
    scorer.check_sources(rows, f"benchmark {benchmark} ({origin})")
    preds = predictions.read(predictions_file, {str(r["id"]) for r in rows}, benchmark, origin)
    scored = [r for r in rows if str(r["id"]) in preds.outputs]
    prompts = [preds.prompts.get(str(r["id"])) or e.prompt_template.format(problem=r["problem"]) for r in scored]
    items, metrics = scoring.score(
        scored, prompts, [preds.outputs[str(r["id"])] for r in scored],
        [preds.n_tokens[str(r["id"])] for r in scored], [preds.truncated[str(r["id"])] for r in scored],
        scorer)
    metrics.update(missing=len(rows) - len(scored), source=origin, predictions=str(predictions_file))
    if metrics["missing"]:
        print(f"bridgerl evaluate: warning: {metrics['missing']} of {len(rows)} items of {benchmark!r} have no "
              f"prediction in {predictions_file}; accuracy is over the {len(scored)} predicted", file=sys.stderr)
    out = Path(out)
    metrics_file = out / "eval.json"
    results = {benchmark: metrics}
    if merge and metrics_file.exists():
        old = read_json(metrics_file)
        results = {**old.get("benchmarks", {}), benchmark: metrics}
    summary = _summary(results, model=None, backend="predictions", config_digest=cfg.digest(), model_sha256=None)
    out.mkdir(parents=True, exist_ok=True)
    out_file = out / f"{benchmark}.jsonl"
    write_jsonl(out_file, items)
    write_json(metrics_file, summary)
    _log(cfg, summary, [out_file], str(metrics_file))
    return {**summary, "out": str(out)}
