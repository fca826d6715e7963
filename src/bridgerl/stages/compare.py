"""`bridgerl compare`: every method on the same data, base model, demos, budget and seeds; a report.

Runs prepare / init-model / build-demos first when their outputs are missing, then for each seed and
method trains (train.* from the configuration, only `train.method` and `seed` change), evaluates on
eval.benchmarks, and writes to --out:
  report.md            accuracy per method (mean ± std over seeds), wall time, peak memory, and the
                       wall time each method needs to reach cold-start's final held-out accuracy
  heldout_vs_step.png, heldout_vs_time.png   held-out accuracy curves, one line per method
  results.json         every number behind the report
  runs/<method>-s<seed>/   each run's metrics and curve (models are not kept)
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

from bridgerl.config import Config
from bridgerl.io import atomic_file, write_json
from bridgerl.train.methods import METHOD_NAMES, METHODS


def _ensure_inputs(cfg: Config) -> None:
    from bridgerl.stages import build_demos, init_model, prepare

    if not (Path(cfg.data.out_dir) / "rl_train.jsonl").exists():
        prepare.run(cfg)
    if not (Path(cfg.model.out_dir) / "config.json").exists():
        init_model.run(cfg)
    if not (Path(cfg.demos.out_dir) / "demos.jsonl").exists():
        build_demos.run(cfg)


def _run_cfg(cfg: Config, method: str, seed: int, run_dir: Path) -> Config:
    c = cfg.model_copy(deep=True)
    c.seed = seed
    c.train.method = method
    c.train.out_dir = str(run_dir / "model")
    c.train.checkpoint_dir = str(run_dir / "checkpoints")
    c.train.metrics_file = str(run_dir / "train.json")
    c.train.plots_file = str(run_dir / "curve.csv")
    c.eval.out_dir = str(run_dir / "eval")
    c.eval.metrics_file = str(run_dir / "eval.json")
    return c


def _curve(path: Path) -> list[tuple[int, float, float]]:
    rows = list(csv.DictReader(open(path)))
    return [(int(r["step"]), float(r["wall_time_s"]), float(r["heldout_accuracy"]))
            for r in rows if r.get("heldout_accuracy") not in ("", None)]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _time_to_reach(curve: list[tuple[int, float, float]], target: float) -> float | None:
    for _, t, acc in curve:
        if acc >= target - 1e-9:
            return t
    return None


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for xkey, fname, xlabel in ((0, "heldout_vs_step.png", "iteration"), (1, "heldout_vs_time.png", "training wall time (s)")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for method, r in results.items():
            curves = [c for c in r["curves"] if c]
            n = min(len(c) for c in curves)
            xs = [statistics.fmean(c[i][xkey] for c in curves) for i in range(n)]
            ys = [100 * statistics.fmean(c[i][2] for c in curves) for i in range(n)]
            ax.plot(xs, ys, marker="o", ms=3, label=method, color=METHODS[method].color if method in METHODS else None,
                    lw=2 if method == "bridge" else 1.3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title(f"held-out accuracy, mean over {len(next(iter(results.values()))['curves'])} seeds")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def _report_md(cfg: Config, results: dict, seeds: list[int], benchmarks: list[str]) -> str:
    t = cfg.train
    lines = [
        "# Method comparison on the embedded default",
        "",
        f"Same data, base model, demonstrations and budget for every method: {t.steps} iterations "
        f"(cold-start: {t.cold_start_sft_steps} SFT + {t.steps} RL), prompt batch {t.prompt_batch} × "
        f"{t.grpo.group_size} rollouts, demo batch {t.demo_batch}; seeds {', '.join(map(str, seeds))}. "
        "Accuracy: greedy pass@1 on the held-out test split, mean ± std over seeds. Training-state "
        "memory: weights (policy, shadow, reference), gradients and optimizer state (peak GPU memory and "
        "process RSS per step are in each run's train.json).",
        "",
        "| method | " + " | ".join(f"{b} (%)" for b in benchmarks) + " | train wall time (s) | training-state memory (MB) | "
        "time to reach cold-start's final held-out acc. (s) |",
        "|---|" + "---|" * len(benchmarks) + "---|---|---|",
    ]
    for method, r in results.items():
        cells = []
        for b in benchmarks:
            m, s = _mean_std([x[b] for x in r["accuracy"]])
            cells.append(f"{100 * m:.1f} ± {100 * s:.1f}")
        wt, _ = _mean_std(r["wall_time_s"])
        pm, _ = _mean_std(r.get("state_memory_mb") or r["peak_memory_mb"])
        reach, n = r.get("time_to_cold_start_final"), r.get("reached_cold_start_final", 0)
        if reach is None:
            reach_s = "—"
        else:
            reach_s = "not reached" if math.isnan(reach) else f"{reach:.0f}"
            reach_s += f" ({n}/{len(seeds)} seeds)" if n < len(seeds) else ""
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {wt:.0f} | {pm:.0f} | {reach_s} |")
    lines += ["", "![held-out accuracy vs iteration](heldout_vs_step.png)", "",
              "![held-out accuracy vs wall time](heldout_vs_time.png)", ""]
    return "\n".join(lines)


def rerender(cfg: Config, out: str | Path) -> dict:
    """Rewrite the report from an earlier run's results.json (no training)."""
    saved = json.loads((Path(out) / "results.json").read_text())
    return finish(cfg, saved["methods"], saved["seeds"], Path(out))


def run(cfg: Config, methods: list[str] | None = None, seeds: list[int] | None = None,
        out: str | Path = "docs/results", progress: bool = True) -> dict:
    from bridgerl.stages import evaluate, train

    methods = methods or list(METHOD_NAMES)  # every method of the table (bridgerl.train.methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown method(s) {bad} (known: {', '.join(METHOD_NAMES)})")
    seeds = seeds if seeds is not None else [cfg.seed]
    out = Path(out)
    _ensure_inputs(cfg)
    results: dict = {}
    for method in methods:
        r = results[method] = {"accuracy": [], "wall_time_s": [], "peak_memory_mb": [], "state_memory_mb": [],
                               "curves": [], "seeds": seeds}
        for seed in seeds:
            run_dir = out / "runs" / f"{method}-s{seed}"
            rc = _run_cfg(cfg, method, seed, run_dir)
            final = train.run(rc, progress=progress)
            ev = evaluate.run(rc, progress=progress)
            shutil.rmtree(rc.train.out_dir, ignore_errors=True)
            shutil.rmtree(rc.train.checkpoint_dir, ignore_errors=True)
            r["accuracy"].append({b: m["accuracy"] for b, m in ev["benchmarks"].items()})
            r["wall_time_s"].append(final["wall_time_s"])
            r["peak_memory_mb"].append(final["peak_memory_mb"])
            r["state_memory_mb"].append(final["state_memory_mb"])
            r["curves"].append(_curve(Path(rc.train.plots_file)))
    return finish(cfg, results, seeds, out)


def finish(cfg: Config, results: dict, seeds: list[int], out: Path) -> dict:
    """Time-to-target per method, plots, report.md and results.json from the per-run results."""
    results = dict(sorted(results.items(), key=lambda kv: METHOD_NAMES.index(kv[0])))
    if "cold_start" in results:
        # per seed: the wall time a method needs to first reach that seed's cold-start final accuracy
        targets = [c[-1][2] if c else None for c in results["cold_start"]["curves"]]
        for r in results.values():
            times = [_time_to_reach(c, t) if t is not None else None for c, t in zip(r["curves"], targets)]
            r["time_to_cold_start_final_per_seed"] = times
            reached = [t for t in times if t is not None]
            r["time_to_cold_start_final"] = statistics.fmean(reached) if reached else float("nan")
            r["reached_cold_start_final"] = len(reached)
    benchmarks = list(cfg.eval.benchmarks)
    out.mkdir(parents=True, exist_ok=True)
    _plot(results, out)
    with atomic_file(out / "report.md") as f:
        f.write(_report_md(cfg, results, seeds, benchmarks))
    write_json(out / "results.json", {"config_digest": cfg.digest(), "seeds": seeds, "methods": results})
    return results
